# The soak's plot (run.sh calls it): tokengate's RSS, p50/p99 latency and CPU per request
# over time, and what the machine did to it (time tokengate waited for its core, its open
# sockets), with the key rotation and the IdP outage marked.
#   gnuplot -e "csv='soak.csv'; png='soak.png'; rotate_add=210; withdraw=300; \
#               outage_start=390; outage_end=420; duration=600" plot.gp
set terminal pngcairo size 1200,1300 font "sans,10"
set output png
set datafile separator ","
set key autotitle columnhead outside right top
set grid
set xrange [0:duration]
set lmargin 12
set rmargin 22

# The outage shaded, the rotation's two steps as lines, on every panel.
set object 1 rect from outage_start, graph 0 to outage_end, graph 1 behind fillcolor rgb "#f4cccc" fillstyle solid 1.0 noborder
set arrow 1 from rotate_add, graph 0 to rotate_add, graph 1 nohead dashtype 2 linecolor rgb "#3c78d8"
set arrow 2 from withdraw, graph 0 to withdraw, graph 1 nohead dashtype 2 linecolor rgb "#cc0000"
set label 1 "key added" at rotate_add, graph 0.95 offset 0.5,0 font "sans,8"
set label 2 "old key withdrawn" at withdraw, graph 0.95 offset 0.5,0 font "sans,8"
set label 3 "IdP outage" at outage_start, graph 0.85 offset 0.5,0 font "sans,8"

set multiplot layout 4,1 title "tokengate soak: one core, 10 s samples"

set ylabel "RSS (MiB)"
set yrange [0:*]
set format x ""
plot csv using 1:2 with linespoints pointtype 7 pointsize 0.5 linewidth 2 title "RSS"

set ylabel "latency (ms)"
set logscale y
set yrange [*:*]
plot csv using 1:8 with linespoints pointtype 7 pointsize 0.5 linewidth 2 title "p50", \
     csv using 1:9 with linespoints pointtype 7 pointsize 0.5 linewidth 2 title "p99"
unset logscale y

set ylabel "CPU (µs per request)"
set yrange [0:*]
plot csv using 1:3 with linespoints pointtype 7 pointsize 0.5 linewidth 2 title "tokengate CPU / request"

# Other processes on the shared machine: the run-queue wait of tokengate's threads (its
# core was taken) and of the load generator's, per 10 s window; and tokengate's sockets.
set ylabel "waited for a CPU (ms / 10 s)"
set y2label "tokengate sockets"
set y2tics
set ytics nomirror
set y2range [0:*]
set format x "%g"
set xlabel "seconds"
plot csv using 1:15 with linespoints pointtype 7 pointsize 0.5 linewidth 2 title "tokengate waited", \
     csv using 1:16 with linespoints pointtype 7 pointsize 0.5 linewidth 1 title "load waited", \
     csv using 1:14 axes x1y2 with lines linewidth 1 dashtype 3 title "sockets"

unset multiplot
