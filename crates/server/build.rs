//! Compiles balsa's .proto files with protox (pure Rust: no protoc needed on a fresh machine).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(
        [
            "proto/rpc.proto",
            "proto/lease.proto",
            "proto/cluster.proto",
            "proto/session.proto",
            "proto/log.proto",
        ],
        ["proto"],
    )?;
    // Generated code makes its codec with `grpc_codec::SmallBufferCodec::default()` (why: that file).
    tonic_build::configure()
        .build_server(true)
        .build_client(true)
        .codec_path("crate::grpc_codec::SmallBufferCodec")
        .compile_fds(descriptors)?;
    Ok(())
}
