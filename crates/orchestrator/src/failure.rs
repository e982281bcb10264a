//! Why an invocation or a store operation failed, as one type: it names the failure in
//! the `reap_invocation_errors_total{kind}` metric and the API's `"kind"` field, and
//! picks the HTTP status the API answers with.
//!
//! | kind | label | HTTP status |
//! |---|---|---|
//! | [`NotFound`](FailureKind::NotFound) | `not_found` | 404 |
//! | [`BadRequest`](FailureKind::BadRequest) | `bad_request` | 400 |
//! | [`TooLarge`](FailureKind::TooLarge) | `too_large` | 413 |
//! | [`SlowClient`](FailureKind::SlowClient) | `slow_client` | 408 |
//! | [`Busy`](FailureKind::Busy) | `busy` | 503 |
//! | [`Timeout`](FailureKind::Timeout) | `timeout` | 504 |
//! | [`Crash`](FailureKind::Crash) | `crash` | 502 |
//! | [`BadResponse`](FailureKind::BadResponse) | `bad_response` | 502 |
//! | [`Store`](FailureKind::Store) | `store` | 500 |
//! | [`Runtime`](FailureKind::Runtime) | `runtime` | 500 |

use axum::http::StatusCode;

/// What kind of failure an error is, from the caller's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// No function of that name is deployed.
    NotFound,
    /// The request is invalid: not JSON, a bad function name or environment entry, a
    /// binary that does not deploy.
    BadRequest,
    /// A request body or binary over its size limit.
    TooLarge,
    /// The client sent its request body too slowly.
    SlowClient,
    /// The function is at its instance limit and none became free in time, a new
    /// instance's memory did not fit in the memory budget in time (or never can), or
    /// the runtime is shutting down.
    Busy,
    /// The function ran past its time limit.
    Timeout,
    /// The function crashed (a guest fault) or exited instead of answering.
    Crash,
    /// The function did not answer with exactly one line.
    BadResponse,
    /// The store cannot read the function (an I/O error, a damaged version).
    Store,
    /// The runtime failed (restoring an instance, the VMM, a worker thread).
    Runtime,
}

impl FailureKind {
    /// The label of the error metric and the API's `"kind"` field.
    pub fn label(self) -> &'static str {
        match self {
            FailureKind::NotFound => "not_found",
            FailureKind::BadRequest => "bad_request",
            FailureKind::TooLarge => "too_large",
            FailureKind::SlowClient => "slow_client",
            FailureKind::Busy => "busy",
            FailureKind::Timeout => "timeout",
            FailureKind::Crash => "crash",
            FailureKind::BadResponse => "bad_response",
            FailureKind::Store => "store",
            FailureKind::Runtime => "runtime",
        }
    }

    /// The status the HTTP API answers with.
    pub fn http_status(self) -> StatusCode {
        match self {
            FailureKind::NotFound => StatusCode::NOT_FOUND,
            FailureKind::BadRequest => StatusCode::BAD_REQUEST,
            FailureKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            FailureKind::SlowClient => StatusCode::REQUEST_TIMEOUT,
            FailureKind::Busy => StatusCode::SERVICE_UNAVAILABLE,
            FailureKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
            FailureKind::Crash | FailureKind::BadResponse => StatusCode::BAD_GATEWAY,
            FailureKind::Store | FailureKind::Runtime => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_statuses_are_the_documented_ones() {
        use FailureKind::*;
        let table: Vec<(&str, u16)> = [
            NotFound,
            BadRequest,
            TooLarge,
            SlowClient,
            Busy,
            Timeout,
            Crash,
            BadResponse,
            Store,
            Runtime,
        ]
        .iter()
        .map(|k| (k.label(), k.http_status().as_u16()))
        .collect();
        assert_eq!(
            table,
            [
                ("not_found", 404),
                ("bad_request", 400),
                ("too_large", 413),
                ("slow_client", 408),
                ("busy", 503),
                ("timeout", 504),
                ("crash", 502),
                ("bad_response", 502),
                ("store", 500),
                ("runtime", 500),
            ]
        );
    }
}
