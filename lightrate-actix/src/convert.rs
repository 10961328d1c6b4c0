//! Between actix-web's types (`http` 0.2 underneath) and the `http` 1 types of
//! `lightrate_core::web`.

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::HttpResponse;
use bytes::Bytes;

/// The request's method as `http` 1 has it. Allocation-free for the standard methods; `None`
/// only for a method `http` refuses (none that actix accepts).
#[inline]
pub(crate) fn http_method(method: &Method) -> Option<http::Method> {
    // Most likely first: one comparison of an enum tag each.
    Some(if *method == Method::GET {
        http::Method::GET
    } else if *method == Method::POST {
        http::Method::POST
    } else if *method == Method::PUT {
        http::Method::PUT
    } else if *method == Method::DELETE {
        http::Method::DELETE
    } else if *method == Method::PATCH {
        http::Method::PATCH
    } else if *method == Method::HEAD {
        http::Method::HEAD
    } else if *method == Method::OPTIONS {
        http::Method::OPTIONS
    } else {
        return http::Method::from_bytes(method.as_str().as_bytes()).ok();
    })
}

/// Appends `http` 1 header fields to an actix header map.
/// actix-web's headers as an `http::HeaderMap` (a copy; those that do not convert left out).
pub(crate) fn http_headers(from: &HeaderMap) -> http::HeaderMap {
    let mut to = http::HeaderMap::with_capacity(from.len());
    for (name, value) in from {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_str().as_bytes()),
            http::HeaderValue::from_bytes(value.as_bytes()),
        ) {
            to.append(name, value);
        }
    }
    to
}

pub(crate) fn append_headers(to: &mut HeaderMap, from: http::HeaderMap) {
    let mut name = None;
    for (next, value) in from {
        // `into_iter` names a field once, for its first value.
        if let Some(next) = next {
            name = HeaderName::from_bytes(next.as_str().as_bytes()).ok();
        }
        if let (Some(name), Ok(value)) = (&name, HeaderValue::from_bytes(value.as_bytes())) {
            to.append(name.clone(), value);
        }
    }
}

/// An answer made with `http` 1 types as an actix response: status, header fields, body.
pub(crate) fn to_actix_response(response: http::Response<Bytes>) -> HttpResponse {
    let (parts, body) = response.into_parts();
    let status =
        StatusCode::from_u16(parts.status.as_u16()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut answer = HttpResponse::with_body(status, body);
    append_headers(answer.headers_mut(), parts.headers);
    answer.map_into_boxed_body()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_convert_including_extensions() {
        for name in [
            "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE",
            "PURGE", "MKCOL",
        ] {
            let actix = Method::from_bytes(name.as_bytes()).unwrap();
            assert_eq!(http_method(&actix).unwrap().as_str(), name);
        }
    }

    #[test]
    fn answers_keep_status_fields_and_body() {
        let mut response = http::Response::new(Bytes::from_static(b"{}"));
        *response.status_mut() = http::StatusCode::TOO_MANY_REQUESTS;
        response
            .headers_mut()
            .insert("retry-after", http::HeaderValue::from_static("3"));
        response
            .headers_mut()
            .append("x-many", http::HeaderValue::from_static("a"));
        response
            .headers_mut()
            .append("x-many", http::HeaderValue::from_static("b"));
        let answer = to_actix_response(response);
        assert_eq!(answer.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(answer.headers().get("retry-after").unwrap(), "3");
        let many: Vec<_> = answer.headers().get_all("x-many").collect();
        assert_eq!(many, ["a", "b"]);
    }
}
