//! Compiles the peer protocol with protox (pure Rust); etcd's own types come from keelson-etcdpb.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-changed=../etcdpb/proto");
    let fds = protox::compile(["proto/raft.proto"], ["proto", "../etcdpb/proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .extern_path(".etcdserverpb", "::keelson_etcdpb::etcdserverpb")
        .extern_path(".mvccpb", "::keelson_etcdpb::mvccpb")
        .extern_path(".authpb", "::keelson_etcdpb::authpb")
        .compile_fds(fds)?;
    Ok(())
}
