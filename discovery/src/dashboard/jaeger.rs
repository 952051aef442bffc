//! Reading Jaeger's query API (`/api/traces`): one trace flattened into spans with
//! their service and cluster, for `meshctl trace` and the dashboard's waterfall.

use std::net::SocketAddr;

use serde_json::Value;

/// Asks Jaeger's query API at `jaeger` for `path` (JSON), within a few seconds.
pub async fn query(jaeger: SocketAddr, path: &str) -> Result<Value, String> {
    get_json(jaeger, path)
        .await
        .map_err(|e| format!("{e} (is Jaeger running? `meshctl testbed up` starts one)"))
}

/// `GET http://addr/path` as JSON, within 5 seconds; the error names the address.
pub(crate) async fn get_json(addr: SocketAddr, path: &str) -> Result<Value, String> {
    let (status, body) = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        mesh_net::http::get(addr, path),
    )
    .await
    .map_err(|_| format!("GET http://{addr}{path}: no answer in 5 s"))?
    .map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("GET http://{addr}{path}: {status}: {body}"));
    }
    serde_json::from_str(&body).map_err(|e| format!("GET http://{addr}{path}: not JSON: {e}"))
}

/// One span, flattened from Jaeger's JSON.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Span {
    /// Span id.
    pub id: String,
    /// Parent span id.
    pub parent: Option<String>,
    /// Operation name.
    pub operation: String,
    /// The reporting process's service.
    pub service: String,
    /// Its cluster (`istio.cluster_id`).
    pub cluster: String,
    /// Start, in microseconds since the epoch.
    pub start_us: u64,
    /// Duration in microseconds.
    pub duration_us: u64,
    /// Where an outbound span sent the request (`outbound_.PORT_.SUBSET_.HOST`),
    /// empty on other spans.
    pub upstream: String,
    /// The response status (`http.status_code`), empty when none.
    pub status: String,
}

fn tag<'a>(tags: &'a Value, key: &str) -> Option<&'a Value> {
    tags.as_array()?
        .iter()
        .find(|t| t["key"] == key)
        .map(|t| &t["value"])
}

/// The spans of one trace in Jaeger's JSON (`data[0]`).
pub fn spans(trace: &Value) -> Vec<Span> {
    let processes = &trace["processes"];
    let mut out: Vec<Span> = trace["spans"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|s| {
            let process = &processes[s["processID"].as_str().unwrap_or_default()];
            let cluster = tag(&s["tags"], "istio.cluster_id")
                .or_else(|| tag(&process["tags"], "istio.cluster_id"))
                .and_then(Value::as_str)
                .unwrap_or("-")
                .to_owned();
            Span {
                id: s["spanID"].as_str().unwrap_or_default().to_owned(),
                parent: s["references"]
                    .as_array()
                    .and_then(|r| r.iter().find(|r| r["refType"] == "CHILD_OF"))
                    .and_then(|r| r["spanID"].as_str())
                    .map(str::to_owned),
                operation: s["operationName"].as_str().unwrap_or_default().to_owned(),
                service: process["serviceName"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                cluster,
                start_us: s["startTime"].as_u64().unwrap_or(0),
                duration_us: s["duration"].as_u64().unwrap_or(0),
                upstream: tag(&s["tags"], "upstream_cluster")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                status: tag(&s["tags"], "http.status_code")
                    .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                    .unwrap_or_default(),
            }
        })
        .collect();
    out.sort_by_key(|s| s.start_us);
    out
}
