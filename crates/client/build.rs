//! Compiles the server's .proto files (etcd's wire format) into client stubs only. The files are
//! read where balsa-server keeps them, so there is one copy of the API; see the crate docs for
//! why the client does not depend on balsa-server itself.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=../server/proto");
    let protos = [
        "../server/proto/rpc.proto",
        "../server/proto/lease.proto",
        "../server/proto/cluster.proto",
        "../server/proto/session.proto",
        "../server/proto/log.proto",
    ];
    let descriptors = protox::compile(protos, ["../server/proto"])?;
    tonic_build::configure().build_server(false).build_client(true).compile_fds(descriptors)?;
    Ok(())
}
