//! PostgreSQL values both ways: [`PgValue`] is the superset of every value the Spin PostgreSQL
//! interfaces (v2, v3, v4) carry; this module turns parameters into bound `ToSql` values and
//! result columns into `PgValue`s by their PostgreSQL type.

use std::error::Error;
use std::str::FromStr;

use bytes::BytesMut;
use chrono::{Datelike, NaiveDate, NaiveDateTime, NaiveTime, Timelike};
use postgres_protocol::types::{range_from_sql, range_to_sql, Range, RangeBound};
use rust_decimal::Decimal;
use tokio_postgres::types::{to_sql_checked, FromSql, IsNull, ToSql, Type};

type BoxError = Box<dyn Error + Sync + Send>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    Inclusive,
    Exclusive,
}

pub type RangeEnds<T> = (Option<(T, Bound)>, Option<(T, Bound)>);

#[derive(Debug, Clone, PartialEq)]
pub enum PgValue {
    Boolean(bool),
    Int8(i8),
    Int16(i16),
    Int32(i32),
    Int64(i64),
    Floating32(f32),
    Floating64(f64),
    Str(String),
    Binary(Vec<u8>),
    Date((i32, u8, u8)),
    Time((u8, u8, u8, u32)),
    Datetime((i32, u8, u8, u8, u8, u8, u32)),
    /// Seconds since the Unix epoch (a `timestamptz`).
    Timestamp(i64),
    Uuid(String),
    Jsonb(Vec<u8>),
    Decimal(String),
    RangeInt32(RangeEnds<i32>),
    RangeInt64(RangeEnds<i64>),
    RangeDecimal(RangeEnds<String>),
    ArrayInt32(Vec<Option<i32>>),
    ArrayInt64(Vec<Option<i64>>),
    ArrayDecimal(Vec<Option<String>>),
    ArrayStr(Vec<Option<String>>),
    Interval(Interval),
    Null,
    /// A column type none of the interfaces can carry: its raw wire bytes.
    Unsupported(Vec<u8>),
}

/// The data type of a result column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgType {
    Boolean,
    Int8,
    Int16,
    Int32,
    Int64,
    Floating32,
    Floating64,
    Str,
    Binary,
    Date,
    Time,
    Datetime,
    Timestamp,
    Uuid,
    Jsonb,
    Decimal,
    RangeInt32,
    RangeInt64,
    RangeDecimal,
    ArrayInt32,
    ArrayInt64,
    ArrayDecimal,
    ArrayStr,
    Interval,
    Other(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interval {
    pub micros: i64,
    pub days: i32,
    pub months: i32,
}

impl<'a> FromSql<'a> for Interval {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        if raw.len() != 16 {
            return Err("an interval is 16 bytes".into());
        }
        let micros = i64::from_be_bytes(raw[0..8].try_into()?);
        let days = i32::from_be_bytes(raw[8..12].try_into()?);
        let months = i32::from_be_bytes(raw[12..16].try_into()?);
        Ok(Interval { micros, days, months })
    }
    fn accepts(ty: &Type) -> bool {
        *ty == Type::INTERVAL
    }
}

impl ToSql for Interval {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        out.extend_from_slice(&self.micros.to_be_bytes());
        out.extend_from_slice(&self.days.to_be_bytes());
        out.extend_from_slice(&self.months.to_be_bytes());
        Ok(IsNull::No)
    }
    fn accepts(ty: &Type) -> bool {
        *ty == Type::INTERVAL
    }
    to_sql_checked!();
}

/// A range column or parameter over `T` (int4range, int8range, numrange).
#[derive(Debug)]
struct PgRange<T>(RangeEnds<T>);

fn element_of(range: &Type) -> Option<Type> {
    match *range {
        Type::INT4_RANGE => Some(Type::INT4),
        Type::INT8_RANGE => Some(Type::INT8),
        Type::NUM_RANGE => Some(Type::NUMERIC),
        _ => None,
    }
}

impl<'a, T: FromSql<'a>> FromSql<'a> for PgRange<T> {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        let element = element_of(ty).ok_or("not a range type")?;
        let bound = |bound: RangeBound<Option<&'a [u8]>>| -> Result<Option<(T, Bound)>, BoxError> {
            Ok(match bound {
                RangeBound::Inclusive(Some(bytes)) => Some((T::from_sql(&element, bytes)?, Bound::Inclusive)),
                RangeBound::Exclusive(Some(bytes)) => Some((T::from_sql(&element, bytes)?, Bound::Exclusive)),
                RangeBound::Inclusive(None) | RangeBound::Exclusive(None) | RangeBound::Unbounded => None,
            })
        };
        match range_from_sql(raw)? {
            Range::Empty => Ok(PgRange((None, None))),
            Range::Nonempty(lower, upper) => Ok(PgRange((bound(lower)?, bound(upper)?))),
        }
    }
    fn accepts(ty: &Type) -> bool {
        element_of(ty).is_some_and(|element| T::accepts(&element))
    }
}

impl<T: ToSql + std::fmt::Debug> ToSql for PgRange<T> {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        let element = element_of(ty).ok_or("not a range type")?;
        let write =
            |end: &Option<(T, Bound)>, buf: &mut BytesMut| -> Result<RangeBound<postgres_protocol::IsNull>, BoxError> {
                let written = |value: &T, buf: &mut BytesMut| -> Result<postgres_protocol::IsNull, BoxError> {
                    Ok(match value.to_sql(&element, buf)? {
                        IsNull::Yes => postgres_protocol::IsNull::Yes,
                        IsNull::No => postgres_protocol::IsNull::No,
                    })
                };
                Ok(match end {
                    None => RangeBound::Unbounded,
                    Some((value, Bound::Inclusive)) => RangeBound::Inclusive(written(value, buf)?),
                    Some((value, Bound::Exclusive)) => RangeBound::Exclusive(written(value, buf)?),
                })
            };
        range_to_sql(|buf| write(&self.0 .0, buf), |buf| write(&self.0 .1, buf), out)?;
        Ok(IsNull::No)
    }
    fn accepts(ty: &Type) -> bool {
        element_of(ty).is_some_and(|element| T::accepts(&element))
    }
    to_sql_checked!();
}

/// NULL for a parameter of any type.
#[derive(Debug)]
struct SqlNull;

impl ToSql for SqlNull {
    fn to_sql(&self, _: &Type, _: &mut BytesMut) -> Result<IsNull, BoxError> {
        Ok(IsNull::Yes)
    }
    fn accepts(_: &Type) -> bool {
        true
    }
    to_sql_checked!();
}

/// Any column, as its raw bytes: for types no interface can carry.
struct RawBytes(Vec<u8>);

impl<'a> FromSql<'a> for RawBytes {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        Ok(RawBytes(raw.to_vec()))
    }
    fn accepts(_: &Type) -> bool {
        true
    }
}

fn decimal(text: &str) -> Result<Decimal, String> {
    Decimal::from_str(text).map_err(|err| format!("`{text}` is not a decimal: {err}"))
}

fn map_range<A, B>(ends: &RangeEnds<A>, f: impl Fn(&A) -> Result<B, String>) -> Result<RangeEnds<B>, String> {
    let one = |end: &Option<(A, Bound)>| -> Result<Option<(B, Bound)>, String> {
        end.as_ref().map(|(value, bound)| Ok((f(value)?, *bound))).transpose()
    };
    Ok((one(&ends.0)?, one(&ends.1)?))
}

/// A parameter, ready to bind. Values are always bound, never spliced into the statement.
pub fn to_parameter(value: &PgValue) -> Result<Box<dyn ToSql + Sync + Send>, String> {
    Ok(match value {
        PgValue::Boolean(v) => Box::new(*v),
        PgValue::Int8(v) => Box::new(*v),
        PgValue::Int16(v) => Box::new(*v),
        PgValue::Int32(v) => Box::new(*v),
        PgValue::Int64(v) => Box::new(*v),
        PgValue::Floating32(v) => Box::new(*v),
        PgValue::Floating64(v) => Box::new(*v),
        PgValue::Str(v) => Box::new(v.clone()),
        PgValue::Binary(v) => Box::new(v.clone()),
        PgValue::Date((y, m, d)) => Box::new(
            NaiveDate::from_ymd_opt(*y, u32::from(*m), u32::from(*d)).ok_or(format!("{y}-{m}-{d} is not a date"))?,
        ),
        PgValue::Time((h, m, s, ns)) => Box::new(
            NaiveTime::from_hms_nano_opt(u32::from(*h), u32::from(*m), u32::from(*s), *ns)
                .ok_or(format!("{h}:{m}:{s}.{ns} is not a time"))?,
        ),
        PgValue::Datetime((y, mo, d, h, mi, s, ns)) => Box::new(NaiveDateTime::new(
            NaiveDate::from_ymd_opt(*y, u32::from(*mo), u32::from(*d)).ok_or(format!("{y}-{mo}-{d} is not a date"))?,
            NaiveTime::from_hms_nano_opt(u32::from(*h), u32::from(*mi), u32::from(*s), *ns)
                .ok_or(format!("{h}:{mi}:{s}.{ns} is not a time"))?,
        )),
        PgValue::Timestamp(seconds) => Box::new(
            chrono::DateTime::<chrono::Utc>::from_timestamp(*seconds, 0).ok_or(format!("{seconds} is out of range"))?,
        ),
        PgValue::Uuid(text) => {
            Box::new(uuid::Uuid::parse_str(text).map_err(|err| format!("`{text}` is not a UUID: {err}"))?)
        }
        PgValue::Jsonb(bytes) => Box::new(
            serde_json::from_slice::<serde_json::Value>(bytes)
                .map_err(|err| format!("the jsonb parameter is not JSON: {err}"))?,
        ),
        PgValue::Decimal(text) => Box::new(decimal(text)?),
        PgValue::RangeInt32(ends) => Box::new(PgRange(*ends)),
        PgValue::RangeInt64(ends) => Box::new(PgRange(*ends)),
        PgValue::RangeDecimal(ends) => Box::new(PgRange(map_range(ends, |text| decimal(text))?)),
        PgValue::ArrayInt32(values) => Box::new(values.clone()),
        PgValue::ArrayInt64(values) => Box::new(values.clone()),
        PgValue::ArrayDecimal(values) => Box::new(
            values
                .iter()
                .map(|v| v.as_deref().map(decimal).transpose())
                .collect::<Result<Vec<_>, _>>()?,
        ),
        PgValue::ArrayStr(values) => Box::new(values.clone()),
        PgValue::Interval(interval) => Box::new(*interval),
        PgValue::Null => Box::new(SqlNull),
        PgValue::Unsupported(_) => return Err("an unsupported value cannot be a parameter".into()),
    })
}

/// The interface data type of a column of PostgreSQL type `ty`.
pub fn type_of(ty: &Type) -> PgType {
    match *ty {
        Type::BOOL => PgType::Boolean,
        Type::CHAR => PgType::Int8,
        Type::INT2 => PgType::Int16,
        Type::INT4 => PgType::Int32,
        Type::INT8 => PgType::Int64,
        Type::FLOAT4 => PgType::Floating32,
        Type::FLOAT8 => PgType::Floating64,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => PgType::Str,
        Type::BYTEA => PgType::Binary,
        Type::DATE => PgType::Date,
        Type::TIME => PgType::Time,
        Type::TIMESTAMP => PgType::Datetime,
        Type::TIMESTAMPTZ => PgType::Timestamp,
        Type::UUID => PgType::Uuid,
        Type::JSONB | Type::JSON => PgType::Jsonb,
        Type::NUMERIC => PgType::Decimal,
        Type::INT4_RANGE => PgType::RangeInt32,
        Type::INT8_RANGE => PgType::RangeInt64,
        Type::NUM_RANGE => PgType::RangeDecimal,
        Type::INT4_ARRAY => PgType::ArrayInt32,
        Type::INT8_ARRAY => PgType::ArrayInt64,
        Type::NUMERIC_ARRAY => PgType::ArrayDecimal,
        Type::TEXT_ARRAY | Type::VARCHAR_ARRAY => PgType::ArrayStr,
        Type::INTERVAL => PgType::Interval,
        _ => PgType::Other(ty.name().to_string()),
    }
}

/// Column `index` of `row` as a [`PgValue`].
pub fn value_at(row: &tokio_postgres::Row, index: usize) -> Result<PgValue, tokio_postgres::Error> {
    fn get<'a, T: FromSql<'a>>(
        row: &'a tokio_postgres::Row,
        index: usize,
        wrap: impl FnOnce(T) -> PgValue,
    ) -> Result<PgValue, tokio_postgres::Error> {
        Ok(row.try_get::<_, Option<T>>(index)?.map(wrap).unwrap_or(PgValue::Null))
    }
    let ty = row.columns()[index].type_().clone();
    match type_of(&ty) {
        PgType::Boolean => get(row, index, PgValue::Boolean),
        PgType::Int8 => get(row, index, PgValue::Int8),
        PgType::Int16 => get(row, index, PgValue::Int16),
        PgType::Int32 => get(row, index, PgValue::Int32),
        PgType::Int64 => get(row, index, PgValue::Int64),
        PgType::Floating32 => get(row, index, PgValue::Floating32),
        PgType::Floating64 => get(row, index, PgValue::Floating64),
        PgType::Str => get(row, index, PgValue::Str),
        PgType::Binary => get(row, index, PgValue::Binary),
        PgType::Date => get(row, index, |d: NaiveDate| {
            PgValue::Date((d.year(), d.month() as u8, d.day() as u8))
        }),
        PgType::Time => get(row, index, |t: NaiveTime| {
            PgValue::Time((t.hour() as u8, t.minute() as u8, t.second() as u8, t.nanosecond()))
        }),
        PgType::Datetime => get(row, index, |dt: NaiveDateTime| {
            PgValue::Datetime((
                dt.year(),
                dt.month() as u8,
                dt.day() as u8,
                dt.hour() as u8,
                dt.minute() as u8,
                dt.second() as u8,
                dt.nanosecond(),
            ))
        }),
        PgType::Timestamp => get(row, index, |t: chrono::DateTime<chrono::Utc>| {
            PgValue::Timestamp(t.timestamp())
        }),
        PgType::Uuid => get(row, index, |u: uuid::Uuid| PgValue::Uuid(u.to_string())),
        PgType::Jsonb => get(row, index, |j: serde_json::Value| {
            PgValue::Jsonb(serde_json::to_vec(&j).unwrap_or_default())
        }),
        PgType::Decimal => get(row, index, |d: Decimal| PgValue::Decimal(d.to_string())),
        PgType::RangeInt32 => get(row, index, |r: PgRange<i32>| PgValue::RangeInt32(r.0)),
        PgType::RangeInt64 => get(row, index, |r: PgRange<i64>| PgValue::RangeInt64(r.0)),
        PgType::RangeDecimal => get(row, index, |r: PgRange<Decimal>| {
            let one = |end: Option<(Decimal, Bound)>| end.map(|(d, b)| (d.to_string(), b));
            PgValue::RangeDecimal((one(r.0 .0), one(r.0 .1)))
        }),
        PgType::ArrayInt32 => get(row, index, PgValue::ArrayInt32),
        PgType::ArrayInt64 => get(row, index, PgValue::ArrayInt64),
        PgType::ArrayDecimal => get(row, index, |v: Vec<Option<Decimal>>| {
            PgValue::ArrayDecimal(v.into_iter().map(|d| d.map(|d| d.to_string())).collect())
        }),
        PgType::ArrayStr => get(row, index, PgValue::ArrayStr),
        PgType::Interval => get(row, index, PgValue::Interval),
        PgType::Other(_) => get(row, index, |raw: RawBytes| PgValue::Unsupported(raw.0)),
    }
}
