//! kaspwatch's compiled decoders. Each function here is a port of a pure-Python decoder
//! under `sensor/decode/` (the reference, and the fallback when this module is not built)
//! and returns the same `Sighting`s or raises the same `DecodeError`; the differential test
//! (`tests/test_native.py`) holds them to that. No unsafe code of our own.
#![forbid(unsafe_code)]

mod dns;
mod http;
mod quic;
mod text;
mod tls;

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple, PyType};
use pyo3::{intern, IntoPyObjectExt};

/// What `bind` was handed: the Python types the results are made of.
struct Bound_ {
    sighting: Py<PyType>,
    no_extra: Py<PyAny>,
    decode_error: Py<PyType>,
    tuple_new: Py<PyAny>,
}

static BOUND: PyOnceLock<Bound_> = PyOnceLock::new();

fn bound(py: Python<'_>) -> PyResult<&'static Bound_> {
    BOUND.get(py).ok_or_else(|| {
        pyo3::exceptions::PyRuntimeError::new_err("kaspwatch_native.bind() was not called")
    })
}

/// Run a pure-Rust decoder; a panic (a bug: every index is checked, so none is expected)
/// becomes a RuntimeError, an ``Exception`` the sensor counts under its ``bug`` layer and
/// survives, instead of PyO3's PanicException (a BaseException that would end the sensor).
fn guarded<T>(f: impl FnOnce() -> T) -> PyResult<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|_| {
        pyo3::exceptions::PyRuntimeError::new_err(
            "kaspwatch_native: a decoder panicked (a bug: please report it)",
        )
    })
}

fn decode_error(py: Python<'_>, msg: impl Into<String>) -> PyErr {
    match bound(py) {
        Ok(b) => PyErr::from_type(b.decode_error.bind(py).clone(), msg.into()),
        Err(e) => e,
    }
}

/// `bind(Sighting, NO_EXTRA, DecodeError)`: the types results and errors are made of.
#[pyfunction]
fn bind(
    py: Python<'_>,
    sighting: Bound<'_, PyType>,
    no_extra: Bound<'_, PyAny>,
    error: Bound<'_, PyType>,
) -> PyResult<()> {
    let tuple_new = py.get_type::<PyTuple>().getattr("__new__")?.unbind();
    let _ = BOUND.set(
        py,
        Bound_ {
            sighting: sighting.unbind(),
            no_extra: no_extra.unbind(),
            decode_error: error.unbind(),
            tuple_new,
        },
    );
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn sighting<'py>(
    py: Python<'py>,
    b: &Bound_,
    kind: &Bound<'py, PyAny>,
    name: &str,
    chain: &[String],
    answers: &[String],
    extra: Bound<'py, PyAny>,
    path: Option<&str>,
    ttl: u32,
    user_agent: Option<&str>,
) -> PyResult<Bound<'py, PyAny>> {
    let fields = (
        kind,
        name,
        PyTuple::new(py, chain)?,
        PyTuple::new(py, answers)?,
        extra,
        path,
        ttl,
        user_agent,
    )
        .into_pyobject(py)?;
    b.tuple_new.bind(py).call1((b.sighting.bind(py), fields))
}

/// `sensor.decode.dns.decode_dns`
#[pyfunction]
fn decode_dns<'py>(py: Python<'py>, payload: &[u8]) -> PyResult<Bound<'py, PyList>> {
    let b = bound(py)?;
    let found = guarded(|| dns::decode_dns(payload))?.map_err(|m| decode_error(py, m))?;
    let out = PyList::empty(py);
    for s in found {
        let kind = if s.answer {
            intern!(py, "dns_answer")
        } else {
            intern!(py, "dns_query")
        };
        let extra = b.no_extra.bind(py).clone();
        out.append(sighting(
            py,
            b,
            kind.as_any(),
            &s.name,
            &s.chain,
            &s.answers,
            extra,
            None,
            s.ttl,
            None,
        )?)?;
    }
    Ok(out)
}

/// `sensor.decode.dns.looks_like_dns`
#[pyfunction]
fn looks_like_dns(payload: &[u8]) -> PyResult<bool> {
    guarded(|| dns::looks_like_dns(payload))
}

fn hello_sighting<'py>(
    py: Python<'py>,
    kind: &Bound<'py, PyAny>,
    found: Option<tls::Hello>,
) -> PyResult<Bound<'py, PyAny>> {
    let b = bound(py)?;
    let Some((name, ech, not_host)) = found else {
        return Ok(py.None().into_bound(py));
    };
    let extra = PyDict::new(py);
    if ech {
        extra.set_item(intern!(py, "ech"), true)?;
    }
    if not_host {
        extra.set_item(intern!(py, "not_host_name"), true)?;
    }
    sighting(
        py,
        b,
        kind,
        &name,
        &[],
        &[],
        extra.into_any(),
        None,
        0,
        None,
    )
}

/// `sensor.decode.tls.parse_client_hello`
#[pyfunction]
fn parse_client_hello<'py>(
    py: Python<'py>,
    hello: &[u8],
    kind: Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let found = guarded(|| tls::parse_client_hello(hello))?.map_err(|m| decode_error(py, m))?;
    hello_sighting(py, &kind, found)
}

/// `sensor.decode.tls.hello_from_stream`
#[pyfunction]
fn hello_from_stream<'py>(py: Python<'py>, buf: &[u8]) -> PyResult<(bool, Bound<'py, PyAny>)> {
    let (complete, found) =
        guarded(|| tls::hello_from_stream(buf))?.map_err(|m| decode_error(py, m))?;
    Ok((
        complete,
        hello_sighting(py, intern!(py, "tls_sni").as_any(), found)?,
    ))
}

/// `sensor.decode.http.decode_http_request`
#[pyfunction]
fn decode_http_request<'py>(py: Python<'py>, payload: &[u8]) -> PyResult<Bound<'py, PyList>> {
    let b = bound(py)?;
    let out = PyList::empty(py);
    let Some(r) = guarded(|| http::decode_http_request(payload))? else {
        return Ok(out);
    };
    let kind = match r.kind {
        "http_connect" => intern!(py, "http_connect"),
        "http_host" => intern!(py, "http_host"),
        _ => intern!(py, "http_request"),
    };
    let extra = if r.kind != "http_request" {
        let d = PyDict::new(py);
        if r.not_host {
            d.set_item(intern!(py, "not_host_name"), true)?;
        }
        if r.proxy_form {
            d.set_item(intern!(py, "proxy_form"), true)?;
        }
        d.into_any()
    } else {
        b.no_extra.bind(py).clone()
    };
    let s = sighting(
        py,
        b,
        kind.as_any(),
        &r.name,
        &[],
        &[],
        extra,
        r.path.as_deref(),
        0,
        r.user_agent.as_deref(),
    )?;
    out.append(s)?;
    Ok(out)
}

/// Client Initial keys of one (version, DCID): opaque, handed back to `open_initial`.
#[pyclass(frozen, module = "kaspwatch_native")]
struct InitialKeys(quic::Keys);

/// `initial_keys(salt, dcid, key_label, iv_label, hp_label)` (RFC 9001 section 5.2)
#[pyfunction]
fn initial_keys(
    salt: &[u8],
    dcid: &[u8],
    key_label: &[u8],
    iv_label: &[u8],
    hp_label: &[u8],
) -> PyResult<InitialKeys> {
    guarded(|| {
        InitialKeys(quic::client_keys(
            salt,
            dcid,
            [key_label, iv_label, hp_label],
        ))
    })
}

/// `sensor.decode.quic._open`: (packet number, plaintext), or None when the tag does not
/// verify.
#[pyfunction]
fn open_initial<'py>(
    py: Python<'py>,
    keys: &InitialKeys,
    data: &[u8],
    start: usize,
    pn_offset: usize,
    end: usize,
    largest_pn: i64,
) -> PyResult<Bound<'py, PyAny>> {
    match guarded(|| quic::open(data, start, pn_offset, end, &keys.0, largest_pn as i128))? {
        quic::Opened::TooShort => Err(decode_error(
            py,
            "quic initial too short for the header-protection sample",
        )),
        quic::Opened::BadTag => Ok(py.None().into_bound(py)),
        quic::Opened::Plain(pn, plain) => {
            (pn as i64, PyBytes::new(py, &plain)).into_bound_py_any(py)
        }
    }
}

#[pymodule]
fn kaspwatch_native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(bind, m)?)?;
    m.add_function(wrap_pyfunction!(decode_dns, m)?)?;
    m.add_function(wrap_pyfunction!(looks_like_dns, m)?)?;
    m.add_function(wrap_pyfunction!(parse_client_hello, m)?)?;
    m.add_function(wrap_pyfunction!(hello_from_stream, m)?)?;
    m.add_function(wrap_pyfunction!(decode_http_request, m)?)?;
    m.add_function(wrap_pyfunction!(initial_keys, m)?)?;
    m.add_function(wrap_pyfunction!(open_initial, m)?)?;
    m.add_class::<InitialKeys>()?;
    // the Sighting fields the results are built with, in order (sensor/decode/__init__.py)
    m.add(
        "SIGHTING_FIELDS",
        (
            "kind",
            "name",
            "chain",
            "answers",
            "extra",
            "path",
            "ttl",
            "user_agent",
        ),
    )?;
    Ok(())
}
