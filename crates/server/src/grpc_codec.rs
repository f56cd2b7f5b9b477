//! The protobuf codec of every generated gRPC service and client (`tonic_build`'s `codec_path`):
//! prost's, with buffers sized for etcd's small messages.
//!
//! tonic's default codec allocates 8 KiB per call to encode into and 8 KiB to decode from; a
//! put is a few hundred bytes each way. At tens of thousands of calls a second those buffers were
//! the largest single cost of glibc's allocator in a put profile (freeing and merging chunks of
//! that size goes through its slow bins). Buffers here start at 1 KiB; a larger message grows its
//! buffer as before (`BytesMut` at least doubles), so large ranges and snapshots are unaffected.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec, ProstCodec};

/// Bytes each call's encode and decode buffers start with.
const BUFFER_BYTES: usize = 1024;
/// tonic's own default: how much a streaming call gathers before a send.
const YIELD_THRESHOLD_BYTES: usize = 32 * 1024;

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER_BYTES, YIELD_THRESHOLD_BYTES)
}

/// prost encoding with small starting buffers (see the module docs).
#[derive(Debug, Clone)]
pub struct SmallBufferCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for SmallBufferCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for SmallBufferCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = <ProstCodec<T, U> as Codec>::Encoder;
    type Decoder = <ProstCodec<T, U> as Codec>::Decoder;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings())
    }
}
