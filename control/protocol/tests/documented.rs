//! Every request and reply docs/control-protocol.md shows is one this
//! crate reads, and writes back as the document shows it: a request
//! parses and survives its own line; a successful reply's result reads as
//! the reply type of the request before it and serialises to the same
//! JSON. A field the document and the types disagree on fails here.

use podswitch_protocol::{
    CaptureResult, FdbEntry, FdbTable, Flushed, Neighbour, PeerInfo, PeerRef, PortInfo, PortRef,
    Reply, Request, RouteInfo, Stats, Status, TraceResult, VersionInfo,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

const DOCUMENT: &str = include_str!("../../../docs/control-protocol.md");

/// The `> ` and `< ` lines of the document's examples, each with the
/// indented lines that continue it (until it is whole JSON).
fn exchanges() -> Vec<(char, String)> {
    let mut lines: Vec<(char, String)> = Vec::new();
    for line in DOCUMENT.lines() {
        if let Some(rest) = line.strip_prefix("> ") {
            lines.push(('>', rest.to_string()));
        } else if let Some(rest) = line.strip_prefix("< ") {
            lines.push(('<', rest.to_string()));
        } else if let Some((_, last)) = lines.last_mut() {
            if line.starts_with("   ") && serde_json::from_str::<Value>(last).is_err() {
                last.push_str(line.trim());
            }
        }
    }
    lines
}

/// `result` read as `T` and written back, compared with the document's.
fn same_as_documented<T: DeserializeOwned + Serialize>(request: &str, result: &Value) {
    let typed: T = serde_json::from_value(result.clone()).unwrap_or_else(|e| {
        panic!("{request}: the documented result does not read: {e}\n{result}")
    });
    let back = serde_json::to_value(&typed).unwrap();
    assert_eq!(&back, result, "{request}: written back differently");
}

#[test]
fn every_documented_exchange_reads_and_writes_back() {
    let exchanges = exchanges();
    let (mut requests, mut results) = (0, 0);
    for pair in exchanges.windows(2) {
        let [('>', line), ('<', reply_line)] = pair else {
            continue;
        };
        requests += 1;
        let reply: Reply = serde_json::from_str(reply_line)
            .unwrap_or_else(|e| panic!("documented reply is not a reply: {e}\n{reply_line}"));
        assert_eq!(reply.v, 1, "{reply_line}");
        let request = match Request::parse(line) {
            Ok(request) => request,
            // A request the protocol itself refuses: the reply documents
            // exactly what it says.
            Err(e) => {
                assert_eq!(reply.error, Some(e.to_string()), "{line}");
                continue;
            }
        };
        assert_eq!(
            Request::parse(&request.to_line()).unwrap(),
            request,
            "{line}"
        );
        if !reply.ok {
            assert!(reply.error.is_some(), "a failure says why: {reply_line}");
            continue;
        }
        let request = &request;
        let result = reply.result.clone().unwrap_or(Value::Null);
        let name = format!("{request:?}");
        match request {
            Request::Version => same_as_documented::<VersionInfo>(&name, &result),
            Request::Status => same_as_documented::<Status>(&name, &result),
            Request::PortAdd { .. } | Request::PortDel { .. } => {
                same_as_documented::<PortRef>(&name, &result)
            }
            Request::PortList => same_as_documented::<Vec<PortInfo>>(&name, &result),
            Request::RouteAdd { .. } | Request::RouteDel { .. } => {
                assert_eq!(result, Value::Null, "{name}")
            }
            Request::RouteList => same_as_documented::<Vec<RouteInfo>>(&name, &result),
            Request::PeerAdd { .. } | Request::PeerDel { .. } => {
                same_as_documented::<PeerRef>(&name, &result)
            }
            Request::PeerList => same_as_documented::<Vec<PeerInfo>>(&name, &result),
            Request::FdbShow => same_as_documented::<FdbTable>(&name, &result),
            Request::FdbFlush => same_as_documented::<Flushed>(&name, &result),
            Request::NeighShow => same_as_documented::<Vec<Neighbour>>(&name, &result),
            Request::Stats => same_as_documented::<Stats>(&name, &result),
            Request::Capture { .. } => same_as_documented::<CaptureResult>(&name, &result),
            Request::Trace { .. } => same_as_documented::<TraceResult>(&name, &result),
        }
        results += 1;
    }
    // A document that lost its examples fails here too.
    assert!(requests >= 20, "only {requests} documented requests");
    assert!(results >= 16, "only {results} documented results");
}

#[test]
fn a_result_that_is_not_its_type_is_refused() {
    let refused = |json: &str, read: fn(Value) -> bool| {
        assert!(read(serde_json::from_str(json).unwrap()), "{json}");
    };
    refused(
        r#"{"mac":"0a:58","port":"veth1","static":false,"age_secs":1}"#,
        |v| serde_json::from_value::<FdbEntry>(v).is_err(),
    );
    refused(r#"{"prefix":"10.244.1.1/24","next_hop":"host"}"#, |v| {
        serde_json::from_value::<RouteInfo>(v).is_err()
    });
    refused(r#"{"flushed_entries":1}"#, |v| {
        serde_json::from_value::<Flushed>(v).is_err()
    });
}
