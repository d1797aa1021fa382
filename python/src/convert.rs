//! Python values to what the cache stores, and back.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyBytes, PyFloat, PyInt, PyList, PyString, PyTuple};
use serde_json::value::RawValue;
use tokcache::{ValueKind, ValueRef};

use crate::text::utf8;

/// A Python value, ready to store.
pub(crate) enum Stored {
    /// An `int` that fits 64 bits: stored as a number.
    Int(i64),
    /// A finite `float`: stored as a number.
    Float(f64),
    /// Anything else, as compact JSON text.
    Json(Box<RawValue>),
}

/// `json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode`: the
/// original's encoder (its C accelerator), except that NaN and infinities raise `ValueError`
/// (the original wrote them as `NaN`, which is not JSON) and non-ASCII stays UTF-8 (the
/// export escapes it as the original did).
static ENCODE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
/// `json.loads`.
static DECODE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

fn encoder(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    ENCODE
        .get_or_try_init(py, || {
            let kwargs = pyo3::types::PyDict::new(py);
            kwargs.set_item("ensure_ascii", false)?;
            kwargs.set_item("separators", (",", ":"))?;
            kwargs.set_item("allow_nan", false)?;
            let encoder = py
                .import("json")?
                .getattr("JSONEncoder")?
                .call((), Some(&kwargs))?;
            Ok(encoder.getattr("encode")?.unbind())
        })
        .map(|f| f.bind(py))
}

fn decoder(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    DECODE
        .get_or_try_init(py, || Ok(py.import("json")?.getattr("loads")?.unbind()))
        .map(|f| f.bind(py))
}

fn json(text: String) -> PyResult<Stored> {
    RawValue::from_string(text)
        .map(Stored::Json)
        .map_err(|e| PyValueError::new_err(format!("not a JSON value: {e}")))
}

/// What `value` is stored as. Raises `ValueError` for NaN, infinities, a circular structure
/// and a `str` holding lone surrogates, `TypeError` (naming the type) for what JSON cannot
/// hold.
pub(crate) fn to_stored(py: Python<'_>, value: &Bound<'_, PyAny>) -> PyResult<Stored> {
    if value.is_none() {
        return json("null".into());
    }
    if let Ok(b) = value.cast::<PyBool>() {
        return json(if b.is_true() { "true" } else { "false" }.into());
    }
    if let Ok(i) = value.cast::<PyInt>() {
        if let Ok(n) = i.extract::<i64>() {
            return Ok(Stored::Int(n));
        }
        // Beyond 64 bits: its digits, as json writes any int (`int.__repr__`).
        let digits = py.get_type::<PyInt>().call_method1("__repr__", (value,))?;
        return json(utf8(&digits, "value")?.to_owned());
    }
    if let Ok(f) = value.cast::<PyFloat>() {
        let x = f.value();
        if !x.is_finite() {
            return Err(PyValueError::new_err(format!(
                "{x} cannot be stored: JSON has no NaN or infinity"
            )));
        }
        return Ok(Stored::Float(x));
    }
    if value.is_instance_of::<PyString>() {
        let s = utf8(value, "value")?;
        return json(serde_json::to_string(s).map_err(|e| PyValueError::new_err(e.to_string()))?);
    }
    let text = encoder(py)?.call1((value,))?;
    json(utf8(&text, "value")?.to_owned())
}

/// The Python value of a stored one.
pub(crate) fn to_py(py: Python<'_>, value: &ValueRef) -> PyResult<Py<PyAny>> {
    Ok(match value.kind() {
        ValueKind::Int => value.as_i64().into_pyobject(py)?.into_any().unbind(),
        ValueKind::Float => value.as_f64().into_pyobject(py)?.into_any().unbind(),
        ValueKind::Tokens => PyList::new(py, value.as_tokens().unwrap_or_default())?
            .into_any()
            .unbind(),
        _ => {
            let text = value
                .as_json_str()
                .ok_or_else(|| PyValueError::new_err("the stored value is not valid JSON text"))?;
            json_to_py(py, text)?
        }
    })
}

/// JSON text to a Python value: the common scalars directly, the rest by `json.loads`.
fn json_to_py(py: Python<'_>, text: &str) -> PyResult<Py<PyAny>> {
    let direct = match text {
        "null" => Some(py.None()),
        "true" => Some(PyBool::new(py, true).to_owned().into_any().unbind()),
        "false" => Some(PyBool::new(py, false).to_owned().into_any().unbind()),
        _ if text.len() >= 2 && text.starts_with('"') && text.ends_with('"') => {
            let inner = &text[1..text.len() - 1];
            if inner.contains(['\\', '"']) {
                None
            } else {
                Some(PyString::new(py, inner).into_any().unbind())
            }
        }
        _ => text
            .parse::<i64>()
            .ok()
            .map(|i| i.into_pyobject(py).map(|o| o.into_any().unbind()))
            .transpose()?,
    };
    match direct {
        Some(v) => Ok(v),
        None => Ok(decoder(py)?.call1((text,))?.unbind()),
    }
}

/// Token ids from a list or tuple of ints, or from a buffer of 4-byte unsigned ints
/// (`array('I')`, a NumPy `uint32` array).
pub(crate) fn tokens_from(tokens: &Bound<'_, PyAny>) -> PyResult<Vec<u32>> {
    if tokens.is_instance_of::<PyList>() || tokens.is_instance_of::<PyTuple>() {
        let mut ids = Vec::with_capacity(tokens.len()?);
        for item in tokens.try_iter()? {
            let item = item?;
            ids.push(item.extract::<u32>().map_err(|_| {
                if item.is_instance_of::<PyInt>() {
                    PyValueError::new_err(format!("token ids are 0..2**32-1, not {item}"))
                } else {
                    PyTypeError::new_err(format!(
                        "token ids must be ints, not {}",
                        item.get_type()
                            .name()
                            .map_or_else(|_| "?".into(), |n| n.to_string())
                    ))
                }
            })?);
        }
        return Ok(ids);
    }
    let py = tokens.py();
    let view = py
        .import("builtins")?
        .getattr("memoryview")?
        .call1((tokens,))
        .map_err(|_| {
            PyTypeError::new_err(
                "tokens must be a list or tuple of ints, or a buffer of 4-byte unsigned ints",
            )
        })?;
    let itemsize: usize = view.getattr("itemsize")?.extract()?;
    let format: String = view.getattr("format")?.extract()?;
    if itemsize != 4 || !matches!(format.as_str(), "I" | "=I" | "<I" | "@I") {
        return Err(PyTypeError::new_err(format!(
            "a buffer of token ids must hold 4-byte unsigned ints (format 'I'), not format \
             {format:?} of {itemsize} bytes"
        )));
    }
    let bytes = view.call_method0("tobytes")?;
    let bytes = bytes.cast::<PyBytes>()?.as_bytes();
    Ok(bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}
