//! JSON parsing that refuses duplicate member names, for everything a decision rests on:
//! the JOSE header, the claims (at any depth) and introspection answers.
//!
//! RFC 8259 §4 only says names "SHOULD be unique", and RFC 7519 §4 and RFC 7515 §4 let
//! a parser either refuse duplicates or keep the last one. `serde_json` keeps the last
//! one; many parsers keep the first. A token like `{"sub":"alice","sub":"admin"}` would
//! then be one user here and another in the upstream that decodes the same token (or
//! `{"active":false,"active":true}` another verdict), so a duplicate name anywhere in the
//! document refuses it: there is one reading or none.
//!
//! The check is part of building the [`Value`]: each member is inserted into its object
//! as it is read, and an insert that replaces an earlier member is the error. It costs
//! no extra pass, allocation or hashing over what `serde_json::from_slice` does. Names
//! are compared after unescaping, so `"a"` and `"\u0061"` are the same name.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// The message of the error for a duplicate name (the name itself is never quoted: it
/// comes from the token).
pub const DUPLICATE_MEMBER: &str = "duplicate member name";

/// Parses one JSON document, refusing duplicate member names at any depth. Otherwise the
/// same as `serde_json::from_slice::<Value>` (trailing characters, nesting limit).
pub fn from_slice(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = UniqueNames.deserialize(&mut deserializer)?;
    deserializer.end()?;
    Ok(value)
}

/// Builds a [`Value`], refusing an object that names a member twice.
struct UniqueNames;

impl<'de> DeserializeSeed<'de> for UniqueNames {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for UniqueNames {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, value: bool) -> Result<Value, E> {
        Ok(Value::Bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Value, E> {
        Ok(Value::Number(value.into()))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Value, E> {
        Ok(Value::Number(value.into()))
    }

    fn visit_f64<E>(self, value: f64) -> Result<Value, E> {
        // serde_json never produces NaN or an infinity; `Null` mirrors its own `Value`.
        Ok(Number::from_f64(value).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, value: &str) -> Result<Value, E> {
        Ok(Value::String(value.to_owned()))
    }

    fn visit_string<E>(self, value: String) -> Result<Value, E> {
        Ok(Value::String(value))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(item) = seq.next_element_seed(UniqueNames)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut members: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(name) = members.next_key::<String>()? {
            let value = members.next_value_seed(UniqueNames)?;
            if object.insert(name, value).is_some() {
                return Err(de::Error::custom(DUPLICATE_MEMBER));
            }
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn refused(text: &str) -> bool {
        from_slice(text.as_bytes())
            .is_err_and(|error| error.to_string().starts_with(DUPLICATE_MEMBER))
    }

    #[test]
    fn duplicate_names_are_refused_at_any_depth() {
        assert!(refused(r#"{"sub":"alice","sub":"admin"}"#));
        assert!(refused(r#"{"active":false,"active":true}"#));
        assert!(refused(
            r#"{"realm_access":{"roles":["a"],"roles":["admin"]}}"#
        ));
        assert!(refused(r#"{"a":[{"b":1},{"c":1,"c":2}]}"#));
        assert!(refused(r#"[[{"x":null,"x":null}]]"#));
    }

    #[test]
    fn names_are_compared_after_unescaping() {
        assert!(refused(r#"{"sub":"alice","s\u0075b":"admin"}"#));
        assert!(refused(r#"{"\/":1,"/":2}"#));
    }

    #[test]
    fn same_name_in_different_objects_is_fine() {
        let value = from_slice(br#"{"a":{"id":1},"b":{"id":2},"c":[{"id":3},{"id":3}]}"#);
        assert_eq!(
            value.unwrap(),
            json!({"a": {"id": 1}, "b": {"id": 2}, "c": [{"id": 3}, {"id": 3}]})
        );
    }

    #[test]
    fn values_are_those_of_serde_json() {
        let text = r#"{"s":"é\n\ud83d\ude00","i":-7,"u":18446744073709551615,"f":1.5e3,
            "big":1e400,"t":true,"n":null,"e":{},"l":[1,"2",[3]],"k":"\u0000"}"#;
        let strict = from_slice(text.as_bytes());
        // 1e400 overflows f64: serde_json refuses it too.
        assert!(strict.is_err());
        assert!(serde_json::from_str::<Value>(text).is_err());
        let text = text.replace("1e400", "1e300");
        assert_eq!(
            from_slice(text.as_bytes()).unwrap(),
            serde_json::from_str::<Value>(&text).unwrap()
        );
    }

    #[test]
    fn malformed_documents_are_still_refused() {
        for text in ["", "{", r#"{"a":1}x"#, r#"{"a" 1}"#, "[1,]", "{\"a\":1,}"] {
            assert!(from_slice(text.as_bytes()).is_err(), "{text:?}");
        }
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(from_slice(deep.as_bytes()).is_err(), "nesting limit");
    }
}
