//! JSON exactly as the original wrote it: Python's `json.dump(obj, f, separators=(',', ':'))`
//! with `ensure_ascii=True` and `repr` floats.

use std::fmt::Write;

use crate::value::Stored;

/// Appends `s` as a JSON string literal, escaped like Python's `ensure_ascii` encoder.
///
/// ```
/// let mut out = String::new();
/// tokcache::bench_support::write_str(&mut out, "naïve \"quote\"");
/// assert_eq!(out, r#""na\u00efve \"quote\"""#);
/// ```
pub fn write_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{u:04x}");
                }
            }
        }
    }
    out.push('"');
}

/// Python's choice where Rust's differs: when the last digit of the shortest digits can be one
/// lower or higher and still give the same float, and the float lies exactly halfway between
/// the two, Python's `repr` takes the even one (562949953421312.25 is "562949953421312.2");
/// Rust's formatting may take the other.
fn python_tie(f: f64, digits: String, exp: i32) -> String {
    let n = digits.len();
    let last = digits.as_bytes()[n - 1] - b'0';
    let with_last = |d: u8| format!("{}{}", &digits[..n - 1], char::from(b'0' + d));
    let parses_to_f = |d: &str| {
        let text = if d.len() > 1 {
            format!("{}.{}e{exp}", &d[..1], &d[1..])
        } else {
            format!("{d}e{exp}")
        };
        text.parse::<f64>().is_ok_and(|g| g == f)
    };
    for other in [last.wrapping_sub(1), last + 1] {
        if other > 9 || (n == 1 && other == 0) {
            continue;
        }
        let alternative = with_last(other);
        if !parses_to_f(&alternative) {
            continue;
        }
        // Both give `f`: a tie only if `f` is exactly halfway between them. A double's
        // decimal expansion ends within 1100 digits, so this one is exact.
        let low = last.min(other);
        let exact = format!("{f:.1100e}");
        let (mantissa, e) = exact.split_once('e').unwrap_or((&exact, ""));
        let exact_digits: String = mantissa.chars().filter(|c| *c != '.').collect();
        let halfway = format!("{}{}5", &digits[..n - 1], char::from(b'0' + low));
        let is_tie = e.parse::<i32>() == Ok(exp)
            && exact_digits.starts_with(&halfway)
            && exact_digits[halfway.len()..].bytes().all(|b| b == b'0');
        if is_tie {
            let even = if low % 2 == 0 { low } else { low + 1 };
            return with_last(even);
        }
    }
    digits
}

/// Appends `f` as Python's `repr(float)` writes it (`1.0`, `1e-05`, `1.5e+16`).
///
/// ```
/// let mut out = String::new();
/// for f in [1.0, 1e-5, 1.5e16, 0.1] {
///     tokcache::bench_support::write_float(&mut out, f);
///     out.push(' ');
/// }
/// assert_eq!(out, "1.0 1e-05 1.5e+16 0.1 ");
/// ```
pub fn write_float(out: &mut String, f: f64) {
    if !f.is_finite() {
        out.push_str(if f.is_nan() {
            "NaN"
        } else if f > 0.0 {
            "Infinity"
        } else {
            "-Infinity"
        });
        return;
    }
    // Rust's `{:e}` gives the shortest round-trip digits: "-1.2345e-5".
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (neg, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let digits = python_tie(f.abs(), digits, exp);
    let decpt = exp + 1; // value = 0.DIGITS x 10^decpt
    if neg {
        out.push('-');
    }
    if !(-4 < decpt && decpt <= 16) {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let _ = write!(out, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    } else if decpt <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', (-decpt) as usize));
        out.push_str(&digits);
    } else {
        let d = decpt as usize;
        if digits.len() <= d {
            out.push_str(&digits);
            out.extend(std::iter::repeat_n('0', d - digits.len()));
            out.push_str(".0");
        } else {
            out.push_str(&digits[..d]);
            out.push('.');
            out.push_str(&digits[d..]);
        }
    }
}

/// Appends compact JSON `text` re-encoded the way Python writes the same value. `None` if the
/// text is not valid JSON.
pub fn write_json(out: &mut String, text: &str) -> Option<()> {
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => {
                let start = i;
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                let lit = text.get(start..=i)?;
                let s: String = serde_json::from_str(lit).ok()?;
                write_str(out, &s);
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < b.len() && matches!(b[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    i += 1;
                }
                let num = &text[start..i];
                if num.contains(['.', 'e', 'E']) {
                    write_float(out, num.parse().ok()?);
                } else {
                    out.push_str(num);
                }
            }
            b' ' | b'\n' | b'\r' | b'\t' => i += 1,
            c => {
                out.push(c as char);
                i += 1;
            }
        }
    }
    Some(())
}

/// Appends a stored value as Python would write it.
pub(crate) fn write_value(out: &mut String, value: &Stored) -> Option<()> {
    match value {
        Stored::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Stored::Float(f) => write_float(out, *f),
        Stored::Tokens(t) => {
            out.push('[');
            for (n, id) in t.iter().enumerate() {
                if n > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{id}");
            }
            out.push(']');
        }
        Stored::Json(text) => write_json(out, text)?,
    }
    Some(())
}

/// One entry object: `{"key":..,"value":..,"timestamp":..,"prefix":..}`.
pub(crate) fn write_entry(
    out: &mut String,
    key: &str,
    value: &Stored,
    timestamp: f64,
    prefix: &str,
) -> Option<()> {
    out.push_str("{\"key\":");
    write_str(out, key);
    out.push_str(",\"value\":");
    write_value(out, value)?;
    out.push_str(",\"timestamp\":");
    write_float(out, timestamp);
    out.push_str(",\"prefix\":");
    write_str(out, prefix);
    out.push('}');
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn float(f: f64) -> String {
        let mut s = String::new();
        write_float(&mut s, f);
        s
    }

    #[test]
    fn floats_like_python_repr() {
        // Each right-hand side is what python3 -c 'print(repr(X))' prints.
        let cases = [
            // Exactly halfway between two shortest forms: Python takes the even last digit.
            (2f64.powi(49) + 0.25, "562949953421312.2"),
            (2f64.powi(49) + 0.75, "562949953421312.8"),
            (2f64.powi(49) + 1.25, "562949953421313.2"),
            (1e23, "1e+23"),
            (5e-324, "5e-324"),
            (1.0, "1.0"),
            (0.5, "0.5"),
            (-0.0, "-0.0"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (1e15, "1000000000000000.0"),
            (123456789.125, "123456789.125"),
            (1764131672.1234567, "1764131672.1234567"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (5e-324, "5e-324"),
            (0.1 + 0.2, "0.30000000000000004"),
        ];
        for (f, want) in cases {
            assert_eq!(float(f), want, "{f}");
        }
    }

    #[test]
    fn strings_like_ensure_ascii() {
        let mut s = String::new();
        write_str(&mut s, "a\"\\\n\u{7f}é🙂\u{1}");
        assert_eq!(s, r#""a\"\\\n\u007f\u00e9\ud83d\ude42\u0001""#);
    }

    #[test]
    fn json_transcoding() {
        let mut s = String::new();
        write_json(
            &mut s,
            r#"{"b":[1,2.0,1e-7,"ü"],"a":null,"big":123456789012345678901234567890}"#,
        )
        .unwrap();
        assert_eq!(
            s,
            r#"{"b":[1,2.0,1e-07,"\u00fc"],"a":null,"big":123456789012345678901234567890}"#
        );
    }
}
