//! Reads an enum value's variant name through serde, without serializing its contents.

use serde::ser::{self, Impossible, Serialize};
use std::fmt;

/// How the walk ended early: serde's error channel is the only way out of the
/// struct/tuple variant calls, so it also carries the name that was found.
#[derive(Debug)]
enum Stop {
    Found(&'static str),
    NotAVariant,
}

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not an externally tagged enum variant")
    }
}

impl std::error::Error for Stop {}

impl ser::Error for Stop {
    fn custom<T: fmt::Display>(_msg: T) -> Self {
        Stop::NotAVariant
    }
}

/// The variant name of an externally tagged enum value (serde's default representation).
///
/// Internally, adjacently tagged and untagged enums serialize as maps or structs, never
/// through serde's `*_variant` calls, so they yield `None` instead of a wrong name.
pub(crate) fn variant_name<T: Serialize + ?Sized>(value: &T) -> Option<&'static str> {
    match value.serialize(VariantName) {
        Ok(name) | Err(Stop::Found(name)) => Some(name),
        Err(Stop::NotAVariant) => None,
    }
}

struct VariantName;

type Never = Impossible<&'static str, Stop>;

macro_rules! not_a_variant {
    ($($method:ident($($arg:ty),*) -> $ok:ty),* $(,)?) => {$(
        fn $method(self, $(_: $arg),*) -> Result<$ok, Stop> {
            Err(Stop::NotAVariant)
        }
    )*};
}

impl ser::Serializer for VariantName {
    type Ok = &'static str;
    type Error = Stop;
    type SerializeSeq = Never;
    type SerializeTuple = Never;
    type SerializeTupleStruct = Never;
    type SerializeTupleVariant = Never;
    type SerializeMap = Never;
    type SerializeStruct = Never;
    type SerializeStructVariant = Never;

    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<&'static str, Stop> {
        Ok(variant)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _value: &T,
    ) -> Result<&'static str, Stop> {
        Ok(variant)
    }

    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Never, Stop> {
        Err(Stop::Found(variant))
    }

    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Never, Stop> {
        Err(Stop::Found(variant))
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<&'static str, Stop> {
        value.serialize(self)
    }

    fn serialize_some<T: Serialize + ?Sized>(self, _value: &T) -> Result<&'static str, Stop> {
        Err(Stop::NotAVariant)
    }

    not_a_variant!(
        serialize_bool(bool) -> &'static str, serialize_i8(i8) -> &'static str,
        serialize_i16(i16) -> &'static str, serialize_i32(i32) -> &'static str,
        serialize_i64(i64) -> &'static str, serialize_u8(u8) -> &'static str,
        serialize_u16(u16) -> &'static str, serialize_u32(u32) -> &'static str,
        serialize_u64(u64) -> &'static str, serialize_f32(f32) -> &'static str,
        serialize_f64(f64) -> &'static str, serialize_char(char) -> &'static str,
        serialize_str(&str) -> &'static str, serialize_bytes(&[u8]) -> &'static str,
        serialize_none() -> &'static str, serialize_unit() -> &'static str,
        serialize_unit_struct(&'static str) -> &'static str,
        serialize_seq(Option<usize>) -> Never, serialize_tuple(usize) -> Never,
        serialize_tuple_struct(&'static str, usize) -> Never,
        serialize_map(Option<usize>) -> Never, serialize_struct(&'static str, usize) -> Never,
    );
}

#[cfg(test)]
mod tests {
    use super::variant_name;

    #[derive(serde::Serialize)]
    #[allow(dead_code)]
    enum External {
        Unit,
        Newtype(u8),
        Tuple(u8, u8),
        Struct { a: u8 },
    }

    #[derive(serde::Serialize)]
    #[serde(tag = "type")]
    enum Internal {
        Unit,
    }

    #[derive(serde::Serialize)]
    #[serde(tag = "t", content = "c")]
    enum Adjacent {
        Unit,
    }

    #[test]
    fn names_external_variants_only() {
        assert_eq!(variant_name(&External::Unit), Some("Unit"));
        assert_eq!(variant_name(&External::Newtype(1)), Some("Newtype"));
        assert_eq!(variant_name(&External::Tuple(1, 2)), Some("Tuple"));
        assert_eq!(variant_name(&External::Struct { a: 1 }), Some("Struct"));
        assert_eq!(variant_name(&Internal::Unit), None);
        assert_eq!(variant_name(&Adjacent::Unit), None);
        assert_eq!(variant_name(&5u8), None);
    }
}
