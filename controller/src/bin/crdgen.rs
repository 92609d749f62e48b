//! Prints the Function CRD: `cargo run -p porchlight-controller --bin crdgen > deploy/crd.yaml`.

fn main() {
    print!("{}", porchlight_controller::crd_yaml());
}
