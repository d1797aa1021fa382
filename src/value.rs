//! Values: how a `T: Serialize` is stored (kind + bytes), and how stored bytes become a `T`.

use std::fmt;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::de::IntoDeserializer;
use serde::ser::{self, Serialize};

use crate::error::{Error, Result};
use crate::record::Kind;

/// A decoded value, as the RAM tier keeps it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Stored {
    Int(i64),
    Float(f64),
    Tokens(Arc<[u32]>),
    /// Compact JSON text.
    Json(Arc<str>),
}

impl Stored {
    /// Turns `value` into what is stored, rejecting NaN and infinities anywhere inside it.
    pub(crate) fn from_value<T: Serialize + ?Sized>(value: &T) -> Result<Self> {
        match value.serialize(Probe) {
            Ok(Shape::Int(i)) => Ok(Stored::Int(i)),
            Ok(Shape::Float(f)) => Ok(Stored::Float(f)),
            Ok(Shape::Other) => serde_json::to_string(value)
                .map(|s| Stored::Json(s.into()))
                .map_err(|e| Error::InvalidValue(e.to_string())),
            Err(ProbeError(why)) => Err(Error::InvalidValue(why)),
        }
    }

    /// The record kind and value bytes of this value.
    pub(crate) fn encode(&self) -> (Kind, Vec<u8>) {
        match self {
            Stored::Int(i) => (Kind::Int, i.to_le_bytes().to_vec()),
            Stored::Float(f) => (Kind::Float, f.to_le_bytes().to_vec()),
            Stored::Tokens(t) => (
                Kind::Tokens,
                t.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ),
            Stored::Json(s) => (Kind::Json, s.as_bytes().to_vec()),
        }
    }

    /// Decodes stored bytes, or says that they are not a value.
    pub(crate) fn decode_value(kind: Kind, bytes: &[u8]) -> Result<Self> {
        Self::decode(kind, bytes).ok_or_else(|| {
            Error::InvalidValue("stored value is not valid (UTF-8 JSON, or its kind)".into())
        })
    }

    /// Decodes stored bytes. `None` for a tombstone or bytes that do not fit the kind.
    pub(crate) fn decode(kind: Kind, bytes: &[u8]) -> Option<Self> {
        Some(match kind {
            Kind::Tombstone => return None,
            Kind::Int => Stored::Int(i64::from_le_bytes(bytes.try_into().ok()?)),
            Kind::Float => Stored::Float(f64::from_le_bytes(bytes.try_into().ok()?)),
            Kind::Tokens => Stored::Tokens(
                bytes
                    .chunks_exact(4)
                    .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            ),
            Kind::Json => Stored::Json(std::str::from_utf8(bytes).ok()?.into()),
            Kind::Legacy => Stored::Json(legacy_value(bytes)?.into()),
        })
    }

    /// Deserializes into the caller's type.
    pub(crate) fn to_value<T: DeserializeOwned>(&self) -> Result<T> {
        let r: Result<T, serde_json::Error> = match self {
            Stored::Int(i) => T::deserialize(i.into_deserializer()),
            Stored::Float(f) => T::deserialize(f.into_deserializer()),
            Stored::Tokens(t) => {
                T::deserialize(serde::de::value::SeqDeserializer::new(t.iter().copied()))
            }
            Stored::Json(s) => serde_json::from_str(s),
        };
        r.map_err(Error::Decode)
    }
}

/// The `value` of an original-format entry object, as JSON text borrowed from it.
pub(crate) fn legacy_value(entry: &[u8]) -> Option<&str> {
    legacy_entry(entry).map(|e| e.value.get())
}

/// An original-format entry object, borrowed.
#[derive(serde::Deserialize)]
pub(crate) struct LegacyEntry<'a> {
    #[serde(borrow)]
    pub key: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    pub value: &'a serde_json::value::RawValue,
    pub timestamp: f64,
    #[serde(borrow)]
    pub prefix: std::borrow::Cow<'a, str>,
}

pub(crate) fn legacy_entry(entry: &[u8]) -> Option<LegacyEntry<'_>> {
    serde_json::from_slice(entry).ok()
}

/// What a value looks like at the top, found without building it.
enum Shape {
    Int(i64),
    Float(f64),
    Other,
}

#[derive(Debug)]
struct ProbeError(String);

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ProbeError {}

impl ser::Error for ProbeError {
    fn custom<M: fmt::Display>(msg: M) -> Self {
        ProbeError(msg.to_string())
    }
}

/// A serializer that only looks: it reports a top-level integer or float and fails on any
/// non-finite float, at any depth (serde_json would silently write those as `null`).
struct Probe;

fn finite(f: f64) -> Result<Shape, ProbeError> {
    if f.is_finite() {
        Ok(Shape::Float(f))
    } else {
        Err(ProbeError(format!("{f} cannot be stored as JSON")))
    }
}

macro_rules! other {
    ($($name:ident: $ty:ty),*) => {
        $(fn $name(self, _v: $ty) -> Result<Shape, ProbeError> { Ok(Shape::Other) })*
    };
}

impl ser::Serializer for Probe {
    type Ok = Shape;
    type Error = ProbeError;
    type SerializeSeq = Probe;
    type SerializeTuple = Probe;
    type SerializeTupleStruct = Probe;
    type SerializeTupleVariant = Probe;
    type SerializeMap = Probe;
    type SerializeStruct = Probe;
    type SerializeStructVariant = Probe;

    other!(serialize_bool: bool, serialize_char: char, serialize_str: &str, serialize_bytes: &[u8]);

    fn serialize_i8(self, v: i8) -> Result<Shape, ProbeError> {
        Ok(Shape::Int(v.into()))
    }
    fn serialize_i16(self, v: i16) -> Result<Shape, ProbeError> {
        Ok(Shape::Int(v.into()))
    }
    fn serialize_i32(self, v: i32) -> Result<Shape, ProbeError> {
        Ok(Shape::Int(v.into()))
    }
    fn serialize_i64(self, v: i64) -> Result<Shape, ProbeError> {
        Ok(Shape::Int(v))
    }
    fn serialize_u8(self, v: u8) -> Result<Shape, ProbeError> {
        Ok(Shape::Int(v.into()))
    }
    fn serialize_u16(self, v: u16) -> Result<Shape, ProbeError> {
        Ok(Shape::Int(v.into()))
    }
    fn serialize_u32(self, v: u32) -> Result<Shape, ProbeError> {
        Ok(Shape::Int(v.into()))
    }
    fn serialize_u64(self, v: u64) -> Result<Shape, ProbeError> {
        Ok(i64::try_from(v).map_or(Shape::Other, Shape::Int))
    }
    fn serialize_i128(self, v: i128) -> Result<Shape, ProbeError> {
        Ok(i64::try_from(v).map_or(Shape::Other, Shape::Int))
    }
    fn serialize_u128(self, v: u128) -> Result<Shape, ProbeError> {
        Ok(i64::try_from(v).map_or(Shape::Other, Shape::Int))
    }
    fn serialize_f32(self, v: f32) -> Result<Shape, ProbeError> {
        finite(v.into())
    }
    fn serialize_f64(self, v: f64) -> Result<Shape, ProbeError> {
        finite(v)
    }
    fn serialize_none(self) -> Result<Shape, ProbeError> {
        Ok(Shape::Other)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, v: &T) -> Result<Shape, ProbeError> {
        v.serialize(self)
    }
    fn serialize_unit(self) -> Result<Shape, ProbeError> {
        Ok(Shape::Other)
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<Shape, ProbeError> {
        Ok(Shape::Other)
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
    ) -> Result<Shape, ProbeError> {
        Ok(Shape::Other)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        v: &T,
    ) -> Result<Shape, ProbeError> {
        v.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        v: &T,
    ) -> Result<Shape, ProbeError> {
        v.serialize(Probe).map(|_| Shape::Other)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Probe, ProbeError> {
        Ok(Probe)
    }
    fn serialize_tuple(self, _: usize) -> Result<Probe, ProbeError> {
        Ok(Probe)
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Probe, ProbeError> {
        Ok(Probe)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Probe, ProbeError> {
        Ok(Probe)
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Probe, ProbeError> {
        Ok(Probe)
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Probe, ProbeError> {
        Ok(Probe)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Probe, ProbeError> {
        Ok(Probe)
    }
}

fn check<T: Serialize + ?Sized>(v: &T) -> Result<(), ProbeError> {
    v.serialize(Probe).map(|_| ())
}

macro_rules! compound {
    ($($trait:ident :: $method:ident),*) => {$(
        impl ser::$trait for Probe {
            type Ok = Shape;
            type Error = ProbeError;
            fn $method<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), ProbeError> {
                check(v)
            }
            fn end(self) -> Result<Shape, ProbeError> {
                Ok(Shape::Other)
            }
        }
    )*};
}

compound!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field
);

impl ser::SerializeMap for Probe {
    type Ok = Shape;
    type Error = ProbeError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, k: &T) -> Result<(), ProbeError> {
        check(k)
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), ProbeError> {
        check(v)
    }
    fn end(self) -> Result<Shape, ProbeError> {
        Ok(Shape::Other)
    }
}

impl ser::SerializeStruct for Probe {
    type Ok = Shape;
    type Error = ProbeError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        _: &'static str,
        v: &T,
    ) -> Result<(), ProbeError> {
        check(v)
    }
    fn end(self) -> Result<Shape, ProbeError> {
        Ok(Shape::Other)
    }
}

impl ser::SerializeStructVariant for Probe {
    type Ok = Shape;
    type Error = ProbeError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        _: &'static str,
        v: &T,
    ) -> Result<(), ProbeError> {
        check(v)
    }
    fn end(self) -> Result<Shape, ProbeError> {
        Ok(Shape::Other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn shapes() {
        assert_eq!(Stored::from_value(&42u64).unwrap(), Stored::Int(42));
        assert_eq!(Stored::from_value(&0.5f64).unwrap(), Stored::Float(0.5));
        assert_eq!(
            Stored::from_value("hi").unwrap(),
            Stored::Json("\"hi\"".into())
        );
        assert_eq!(
            Stored::from_value(&u64::MAX).unwrap(),
            Stored::Json(u64::MAX.to_string().into())
        );
        assert!(Stored::from_value(&f64::NAN).is_err());
        assert!(Stored::from_value(&vec![1.0, f64::INFINITY]).is_err());
        let mut m = HashMap::new();
        m.insert("a", f64::NEG_INFINITY);
        assert!(Stored::from_value(&m).is_err());
    }

    #[test]
    fn decode_into_types() {
        let n: u64 = Stored::Int(42).to_value().unwrap();
        assert_eq!(n, 42);
        let f: f64 = Stored::Int(3).to_value().unwrap();
        assert_eq!(f, 3.0);
        let v: Vec<u32> = Stored::Tokens(vec![1, 2].into()).to_value().unwrap();
        assert_eq!(v, [1, 2]);
        assert!(Stored::Json("\"x\"".into()).to_value::<u64>().is_err());
    }
}
