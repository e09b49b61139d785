//! Deserialization helpers. Addresses and backends are read element by element with their
//! index, so an error says which entry is wrong and why; the TOML deserializer adds the line and
//! column of that entry.

use super::{BackendConfig, MAX_WEIGHT, PoolConfig};
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use std::{fmt, marker::PhantomData, net::SocketAddr, time::Duration};

const BAD_ADDR_HINT: &str = "expected IPv4:port or [IPv6]:port with a port 1-65535";

fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    text.parse().map_err(|_| format!("invalid socket address {text:?} ({BAD_ADDR_HINT})"))
}

/// Reads a duration written as a string such as `"500ms"` or `"2s"`.
pub(super) fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map_err(|e| {
        de::Error::custom(format!("invalid duration {text:?} ({e}; expected e.g. \"500ms\" or \"2s\")"))
    })
}

/// Reads `[lo, hi]`: exactly two status codes.
pub(super) fn de_status_range<'de, D: Deserializer<'de>>(d: D) -> Result<(u16, u16), D::Error> {
    match Vec::<u16>::deserialize(d)?.as_slice() {
        &[lo, hi] => Ok((lo, hi)),
        other => Err(de::Error::custom(format!(
            "expected two status codes [lo, hi], found {} value(s)",
            other.len()
        ))),
    }
}

/// An element of a list in the file (a VIP, a backend) read so that its errors name the list
/// and the element's index, and point at the element's own line and column.
pub(super) trait ListElement: Sized {
    /// The element as written, before checking (a string, or a string or an inline table).
    type Raw: de::DeserializeOwned + From<String>;
    /// The list's key in messages (`vips`, `backends`).
    const LIST: &'static str;
    /// What the list looks like, for serde's "expected ..." messages.
    const LIST_SHAPE: &'static str;
    /// What one element looks like, for serde's "expected ..." messages.
    const SHAPE: &'static str;
    /// The message when an element is not a [`Self::Raw`] at all; `None` keeps serde's.
    const NOT_RAW: Option<&'static str>;
    /// Checks and converts the element as written.
    fn convert(raw: Self::Raw) -> Result<Self, String>;
}

impl ListElement for SocketAddr {
    type Raw = String;
    const LIST: &'static str = "vips";
    const LIST_SHAPE: &'static str = "an array of \"ip:port\" strings";
    const SHAPE: &'static str = "a string \"ip:port\"";
    const NOT_RAW: Option<&'static str> = None;
    fn convert(raw: String) -> Result<Self, String> {
        parse_addr(&raw)
    }
}

impl ListElement for BackendConfig {
    type Raw = BackendEntry;
    const LIST: &'static str = "backends";
    const LIST_SHAPE: &'static str =
        "an array of backends (\"ip:port\" or { addr = \"ip:port\", weight = N })";
    const SHAPE: &'static str = BACKEND_SHAPE;
    const NOT_RAW: Option<&'static str> = Some(BACKEND_SHAPE);
    fn convert(raw: BackendEntry) -> Result<Self, String> {
        BackendConfig::try_from(raw)
    }
}

/// Reads a list of [`ListElement`]s, each with its index.
pub(super) fn de_list<'de, D: Deserializer<'de>, T: ListElement>(d: D) -> Result<Vec<T>, D::Error> {
    struct List<T>(PhantomData<T>);

    impl<'de, T: ListElement> Visitor<'de> for List<T> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(T::LIST_SHAPE)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
            while let Some(value) = seq.next_element_seed(ElementSeed::<T>::at(Some(out.len())))? {
                out.push(value);
            }
            Ok(out)
        }
    }

    d.deserialize_seq(List(PhantomData))
}

/// Reads one [`ListElement`]. Goes through `deserialize_newtype_struct` so that errors raised
/// here are attributed to the element (its line and column), not to the whole array.
struct ElementSeed<T> {
    index: Option<usize>,
    element: PhantomData<T>,
}

impl<T: ListElement> ElementSeed<T> {
    fn at(index: Option<usize>) -> Self {
        Self { index, element: PhantomData }
    }

    /// `reason`, prefixed with the list and index when known.
    fn error<E: de::Error>(&self, reason: impl fmt::Display) -> E {
        match self.index {
            Some(i) => E::custom(format!("{}[{i}]: {reason}", T::LIST)),
            None => E::custom(reason),
        }
    }

    fn convert<E: de::Error>(&self, raw: T::Raw) -> Result<T, E> {
        T::convert(raw).map_err(|reason| self.error(reason))
    }
}

impl<'de, T: ListElement> DeserializeSeed<'de> for ElementSeed<T> {
    type Value = T;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<T, D::Error> {
        d.deserialize_newtype_struct("ListElement", self)
    }
}

impl<'de, T: ListElement> Visitor<'de> for ElementSeed<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(T::SHAPE)
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<T, D::Error> {
        let raw = T::Raw::deserialize(d).map_err(|e| match T::NOT_RAW {
            Some(shape) => self.error(shape),
            None => self.error(e),
        })?;
        self.convert(raw)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        self.convert(T::Raw::from(v.to_owned()))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        let raw = T::Raw::deserialize(de::value::MapAccessDeserializer::new(map))?;
        self.convert(raw)
    }
}

/// A backend as written in TOML, before checking: a bare address or an inline table.
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum BackendEntry {
    Addr(String),
    Table(toml::Table),
}

impl From<String> for BackendEntry {
    fn from(text: String) -> Self {
        Self::Addr(text)
    }
}

const BACKEND_SHAPE: &str =
    "expected a string \"ip:port\" or an inline table { addr = \"ip:port\", weight = N }";

impl TryFrom<BackendEntry> for BackendConfig {
    type Error = String;

    fn try_from(entry: BackendEntry) -> Result<Self, String> {
        match entry {
            BackendEntry::Addr(text) => Ok(BackendConfig { addr: parse_addr(&text)?, weight: 1 }),
            BackendEntry::Table(table) => {
                if let Some(key) = table.keys().find(|k| *k != "addr" && *k != "weight") {
                    return Err(format!("unknown field `{key}`, expected `addr` or `weight`"));
                }
                let addr = match table.get("addr") {
                    Some(toml::Value::String(text)) => parse_addr(text)?,
                    Some(other) => {
                        return Err(format!(
                            "`addr` must be a string \"ip:port\", found {}",
                            other.type_str()
                        ));
                    }
                    None => return Err("missing field `addr`".to_owned()),
                };
                let weight = match table.get("weight") {
                    None => 1,
                    Some(toml::Value::Integer(w)) => u32::try_from(*w)
                        .map_err(|_| format!("weight {w} is out of range (0..={MAX_WEIGHT})"))?,
                    Some(other) => {
                        return Err(format!("`weight` must be an integer, found {}", other.type_str()));
                    }
                };
                Ok(BackendConfig { addr, weight })
            }
        }
    }
}

impl<'de> Deserialize<'de> for BackendConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        ElementSeed::at(None).deserialize(d)
    }
}

/// Reads `[services.pools.<name>]` tables into a list, in file order, naming each pool after
/// its key.
pub(super) fn de_pools<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<PoolConfig>, D::Error> {
    struct Pools;

    impl<'de> Visitor<'de> for Pools {
        type Value = Vec<PoolConfig>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a table of pools, one [services.pools.<name>] table per pool")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut pools = Vec::new();
            while let Some(name) = map.next_key::<String>()? {
                let mut pool: PoolConfig = map.next_value()?;
                pool.name = name;
                pools.push(pool);
            }
            Ok(pools)
        }
    }

    d.deserialize_map(Pools)
}
