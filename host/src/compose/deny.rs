//! The host's answer to a dependency's denied imports (the `mosaic-denied-` instances a
//! composition leaves): every function of such an instance is defined from its type alone,
//! answering a denial instead of running the capability:
//!
//! - a `result<_, E>` is an error: E's `access-denied` case where it has one, else a case that
//!   carries a message (`other(string)`, `internal-error(option<string>)`), else its first case;
//! - anything else is its empty value: no environment variable, no preopened directory, `none`;
//! - a value that cannot be made up (a resource, a stream) is a trap that says what was denied.
//!
//! Resources a denied interface defines get a type of their own (none is ever made); those it
//! only uses from another interface keep that interface's (the linker has them already).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use wasmtime::component::types::{ComponentFunc, ComponentItem};
use wasmtime::component::{Component, Linker, ResourceType, Type, Val};
use wasmtime::Engine;

use super::{grant_of, original_of_denied, DENIED_PREFIX};
use crate::instance::InstanceState;

/// Payloads of the resource types of denied interfaces: each a type of its own.
static NEXT_DENIED_RESOURCE: AtomicU32 = AtomicU32::new(0);

/// `linker` with the denied imports of `component` defined, when it has any.
pub fn linker_for(
    linker: &Linker<InstanceState>,
    component: &Component,
    engine: &Engine,
) -> anyhow::Result<Option<Linker<InstanceState>>> {
    let component_type = component.component_type();
    let imports: Vec<(String, ComponentItem)> = component_type
        .imports(engine)
        .map(|(name, item)| (name.to_string(), item.ty))
        .collect();
    if !imports.iter().any(|(name, _)| is_denied(name)) {
        return Ok(None);
    }
    // Resources of the allowed imports, and of denied ones met earlier: a denied interface that
    // uses one of them (preopens uses filesystem's descriptor) keeps it, as the component says.
    let mut known_resources = Vec::new();
    for (name, item) in &imports {
        if let (false, ComponentItem::ComponentInstance(instance)) = (is_denied(name), item) {
            for (_, export) in instance.exports(engine) {
                if let ComponentItem::Resource(resource) = export.ty {
                    known_resources.push(resource);
                }
            }
        }
    }
    let mut linker = linker.clone();
    for (name, item) in &imports {
        let (true, ComponentItem::ComponentInstance(instance)) = (is_denied(name), item) else {
            continue;
        };
        let original = original_of_denied(name).unwrap_or(name);
        let message: Arc<str> = Arc::from(match grant_of(original) {
            Some(grant) => format!(
                "{original} is not permitted here: this dependency does not inherit `{grant}` \
                 (inherit_configuration in spin.toml)"
            ),
            None => {
                format!("{original} is not permitted here: it works on a capability this dependency does not inherit")
            }
        });
        let mut target = linker.instance(name)?;
        for (export, item) in instance.exports(engine) {
            match item.ty {
                ComponentItem::Resource(resource) if !known_resources.contains(&resource) => {
                    let payload = NEXT_DENIED_RESOURCE.fetch_add(1, Ordering::Relaxed);
                    target.resource(export, ResourceType::host_dynamic(payload), |_, _| Ok(()))?;
                    known_resources.push(resource);
                }
                ComponentItem::ComponentFunc(func) => define_denial(&mut target, export, func, message.clone())?,
                _ => {}
            }
        }
    }
    Ok(Some(linker))
}

fn is_denied(name: &str) -> bool {
    name.starts_with(DENIED_PREFIX)
}

fn define_denial(
    target: &mut wasmtime::component::LinkerInstance<'_, InstanceState>,
    name: &str,
    func: ComponentFunc,
    message: Arc<str>,
) -> anyhow::Result<()> {
    let answers: Option<Vec<Val>> = func.results().map(|ty| denial(&ty, &message)).collect();
    let answer = move |results: &mut [Val]| -> wasmtime::Result<()> {
        match &answers {
            Some(answers) => {
                for (slot, answer) in results.iter_mut().zip(answers) {
                    *slot = answer.clone();
                }
                Ok(())
            }
            None => Err(wasmtime::Error::msg(message.to_string())),
        }
    };
    if func.async_() {
        target.func_new_concurrent(name, move |_, _, _, results| {
            let outcome = answer(results);
            Box::pin(async move { outcome })
        })?;
    } else {
        target.func_new(name, move |_, _, _, results| answer(results))?;
    }
    Ok(())
}

/// The denial a function answers with, for one of its results; None when none can be made.
fn denial(ty: &Type, message: &str) -> Option<Val> {
    match ty {
        Type::Result(result) => {
            let error = match result.err() {
                Some(error) => Some(Box::new(error_value(&error, message)?)),
                None => None,
            };
            Some(Val::Result(Err(error)))
        }
        other => empty(other, message),
    }
}

/// The error a denied call returns: `access-denied` where the error type has it.
fn error_value(ty: &Type, message: &str) -> Option<Val> {
    match ty {
        Type::Enum(cases) => {
            let names: Vec<&str> = cases.names().collect();
            let case = names
                .iter()
                .find(|name| **name == "access-denied")
                .or_else(|| names.first())?;
            Some(Val::Enum(case.to_string()))
        }
        Type::Variant(variant) => {
            let cases: Vec<_> = variant.cases().collect();
            if let Some(case) = cases.iter().find(|case| case.name == "access-denied") {
                let payload = match &case.ty {
                    Some(ty) => Some(Box::new(empty(ty, message)?)),
                    None => None,
                };
                return Some(Val::Variant(case.name.to_string(), payload));
            }
            // A case that can carry the reason.
            for case in &cases {
                match &case.ty {
                    Some(Type::String) => {
                        return Some(Val::Variant(
                            case.name.to_string(),
                            Some(Box::new(Val::String(message.into()))),
                        ))
                    }
                    Some(Type::Option(inner)) if inner.ty() == Type::String => {
                        let reason = Val::Option(Some(Box::new(Val::String(message.into()))));
                        return Some(Val::Variant(case.name.to_string(), Some(Box::new(reason))));
                    }
                    _ => {}
                }
            }
            let first = cases.first()?;
            let payload = match &first.ty {
                Some(ty) => Some(Box::new(empty(ty, message)?)),
                None => None,
            };
            Some(Val::Variant(first.name.to_string(), payload))
        }
        Type::String => Some(Val::String(message.into())),
        other => empty(other, message),
    }
}

/// The empty value of a type: nothing, zero, false; None for values that cannot be made up.
fn empty(ty: &Type, message: &str) -> Option<Val> {
    Some(match ty {
        Type::Bool => Val::Bool(false),
        Type::S8 => Val::S8(0),
        Type::U8 => Val::U8(0),
        Type::S16 => Val::S16(0),
        Type::U16 => Val::U16(0),
        Type::S32 => Val::S32(0),
        Type::U32 => Val::U32(0),
        Type::S64 => Val::S64(0),
        Type::U64 => Val::U64(0),
        Type::Float32 => Val::Float32(0.0),
        Type::Float64 => Val::Float64(0.0),
        Type::Char => Val::Char('\0'),
        Type::String => Val::String(String::new()),
        Type::List(_) => Val::List(Vec::new()),
        Type::Map(_) => Val::Map(Vec::new()),
        Type::Option(_) => Val::Option(None),
        Type::Flags(_) => Val::Flags(Vec::new()),
        Type::Tuple(tuple) => Val::Tuple(tuple.types().map(|ty| empty(&ty, message)).collect::<Option<_>>()?),
        Type::Record(record) => Val::Record(
            record
                .fields()
                .map(|field| Some((field.name.to_string(), empty(&field.ty, message)?)))
                .collect::<Option<_>>()?,
        ),
        Type::Result(_) => return denial(ty, message),
        Type::Enum(_) | Type::Variant(_) => return error_value(ty, message),
        Type::Own(_)
        | Type::Borrow(_)
        | Type::Future(_)
        | Type::Stream(_)
        | Type::ErrorContext
        | Type::FixedLengthList(_) => return None,
    })
}
