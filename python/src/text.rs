//! Borrowing the UTF-8 of a Python `str` without copying it: keys are chat messages of up to
//! hundreds of KB, looked up again and again.
#![allow(unsafe_code)]

use std::os::raw::c_char;

use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyString;

unsafe extern "C" {
    /// In CPython's C API since 3.3 and in the stable ABI since 3.10. PyO3 declares it only
    /// from 3.10 on for stable-ABI builds (this module is built for 3.9's); every CPython from
    /// 3.9 exports it. Without it a stable-ABI build of 3.9 copies each key into a new `bytes`.
    fn PyUnicode_AsUTF8AndSize(
        unicode: *mut ffi::PyObject,
        size: *mut ffi::Py_ssize_t,
    ) -> *const c_char;
}

/// The UTF-8 text of `obj`, which must be a `str` (`what` names the argument in the
/// `TypeError`); a `str` holding lone surrogates raises `UnicodeEncodeError`.
pub(crate) fn utf8<'a>(obj: &'a Bound<'_, PyAny>, what: &str) -> PyResult<&'a str> {
    let Ok(s) = obj.cast::<PyString>() else {
        let type_name = obj.get_type().name()?;
        return Err(PyTypeError::new_err(format!(
            "{what} must be str, not {type_name}"
        )));
    };
    let mut size: ffi::Py_ssize_t = 0;
    // SAFETY: `s` is a live `str` we hold a reference to for 'a. CPython stores the UTF-8 it
    // returns inside the object and frees it only with the object; a `str` is immutable, so
    // the bytes stay as they are for 'a. NULL means it set an exception.
    let ptr = unsafe { PyUnicode_AsUTF8AndSize(s.as_ptr(), &raw mut size) };
    if ptr.is_null() {
        return Err(PyErr::fetch(obj.py()));
    }
    let len = usize::try_from(size).unwrap_or(0);
    // SAFETY: CPython returned `len` bytes of valid UTF-8 at `ptr`, alive for 'a (above).
    let bytes = unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) };
    // SAFETY: the UTF-8 encoder's output is valid UTF-8.
    Ok(unsafe { std::str::from_utf8_unchecked(bytes) })
}
