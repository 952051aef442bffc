//! The Isthmus config model: Istio's `networking.istio.io` and `security.istio.io`
//! resources as Rust types, unchanged from what users write, with their defaults,
//! Kubernetes CRDs derived from the same types, and validation whose errors name the
//! object, the field path and the reason.
//!
//! `VirtualService`, `DestinationRule`, `Gateway` and `ServiceEntry` are read in
//! versions `v1`, `v1beta1` and `v1alpha3`; `PeerAuthentication`,
//! `AuthorizationPolicy` and `RequestAuthentication` in `v1` and `v1beta1`. All
//! versions share one schema, as in Istio.
//!
//! ```
//! let vs = mesh_api::parse_resource(r#"
//! apiVersion: networking.istio.io/v1beta1
//! kind: VirtualService
//! metadata: { name: reviews, namespace: default }
//! spec:
//!   hosts: [reviews]
//!   http:
//!   - route:
//!     - destination: { host: reviews, subset: v1 }
//! "#).unwrap();
//! assert_eq!(vs.kind(), "VirtualService");
//! ```

pub mod common;
pub mod coverage;
mod coverage_table;
pub mod crd;
mod document;
pub mod duration;
pub mod mcs;
pub mod networking;
pub mod precedence;
pub mod security;
pub mod validate;

pub use document::{
    KINDS, NETWORKING_GROUP, NETWORKING_VERSIONS, REFUSED_CODE, REFUSED_FIX, Resource,
    ResourceError, SECURITY_GROUP, SECURITY_VERSIONS, from_value, from_value_with_warnings,
    is_istio_group, is_istio_kind, parse_resource, parse_resources, split_documents, type_meta,
};
pub use duration::Duration;
