//! How config file values are read into [`RunArgs`](super::flags::RunArgs)' fields, each with the
//! flag's own parser, so a value means the same in both places (serde `deserialize_with`).
use std::{net::SocketAddr, time::Duration};

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, de::Error as _};

use crate::model::{
    fairness::{Fairness, parse_fairness},
    units::{check_threshold, parse_cidr, parse_duration, parse_duration_or_off, parse_low_water, parse_size},
};

pub(super) fn threshold<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    size(d)?.map(check_threshold).transpose().map_err(D::Error::custom)
}

/// `75` or `"75%"`.
pub(super) fn low_water<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Percent {
        Number(u64),
        Text(String),
    }
    let text = match Percent::deserialize(d) {
        Ok(Percent::Number(n)) => n.to_string(),
        Ok(Percent::Text(s)) => s,
        Err(_) => return Err(D::Error::custom("expected a percentage of the threshold (75 or \"75%\")")),
    };
    parse_low_water(&text).map(Some).map_err(D::Error::custom)
}

pub(super) fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s = String::deserialize(d).map_err(|_| D::Error::custom("expected a duration string (\"3s\", \"250ms\")"))?;
    parse_duration(&s).map(Some).map_err(D::Error::custom)
}

/// A duration, or `0`/`"off"` for none.
pub(super) fn duration_or_off<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Value {
        Number(u64),
        Text(String),
    }
    match Value::deserialize(d) {
        Ok(Value::Number(0)) => Ok(Some(Duration::ZERO)),
        Ok(Value::Text(s)) => parse_duration_or_off(&s).map(Some).map_err(D::Error::custom),
        _ => Err(D::Error::custom("expected a duration string (\"60s\") or 0 for none")),
    }
}

pub(super) fn address<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let bad = || D::Error::custom("expected \"ADDRESS:PORT\", e.g. \"127.0.0.1:9465\"");
    String::deserialize(d).map_err(|_| bad())?.parse().map(Some).map_err(|_| bad())
}

pub(super) fn fairness<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Fairness>, D::Error> {
    let s = String::deserialize(d)?;
    parse_fairness(&s).map(Some).map_err(D::Error::custom)
}

pub(super) fn cidrs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
    Vec::<String>::deserialize(d)?.iter().map(|s| parse_cidr(s).map_err(D::Error::custom)).collect()
}

pub(super) fn positive<'de, D: Deserializer<'de>, T>(d: D) -> Result<Option<T>, D::Error>
where
    T: Deserialize<'de> + PartialEq + From<u8>,
{
    let n = T::deserialize(d)?;
    if n == T::from(0) {
        return Err(D::Error::custom("must be at least 1"));
    }
    Ok(Some(n))
}

/// Plain bytes (`65536`) or a size with its unit (`"64MiB"`).
pub(super) fn size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    match Size::deserialize(d) {
        Ok(Size::Bytes(n)) => Ok(Some(n)),
        Ok(Size::Text(s)) => parse_size(&s).map(Some).map_err(D::Error::custom),
        Err(_) => Err(D::Error::custom("expected a size: bytes (65536) or a string with a unit (\"64MiB\")")),
    }
}
