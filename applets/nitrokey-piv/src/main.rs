//! The Nitrokey PIV applet (crate `piv-authenticator`) on trussed's software
//! platform, attached to vpcd as a card: an independent PIV implementation
//! the test suite encodes through pcscd.
//!
//! Usage: `nitrokey-piv-vpcd [PORT] [HOST]` (defaults 35963, 127.0.0.1).
//!
//! vpcd protocol: this program is a TCP client of vpcd; every message is a
//! 2-byte big-endian length followed by the payload. One-byte payloads are
//! control messages (0 power off, 1 power on, 2 reset, 4 get ATR); any other
//! payload is an APDU, answered with the response APDU.
//!
//! The applet leaves command chaining and GET RESPONSE to its platform's APDU
//! dispatcher; this program plays that part: chained command data is gathered
//! until the last block, long answers are returned in blocks of at most 256
//! bytes with `61xx`, fetched by GET RESPONSE. The card's storage is in RAM:
//! it lives as long as this process, across power cycles and resets.

use std::io::{Read, Write};
use std::net::TcpStream;

use piv_authenticator::{Authenticator, Options};
use trussed::{
    backend::{Backend as _, BackendId},
    platform::Platform,
    serde_extensions::{ExtensionDispatch, ExtensionId, ExtensionImpl as _},
    service::ServiceResources,
    types::Context,
    virt::{self, StoreConfig},
};
use trussed_auth::AuthExtension;
use trussed_auth_backend::{AuthBackend, AuthContext, FilesystemLayout};
use trussed_chunked::ChunkedExtension;
use trussed_core::{
    Error,
    api::{Reply, Request, reply, request},
    types::Location,
};
use trussed_hpke::HpkeExtension;
use trussed_staging::{StagingBackend, StagingContext};
use trussed_wrap_key_to_file::WrapKeyToFileExtension;

/// A neutral T=1 ATR (no historical bytes).
const ATR: [u8; 5] = [0x3B, 0x80, 0x80, 0x01, 0x01];

/// The custom backends: trussed-staging (chunked files, HPKE, key wrapping
/// to files) and trussed-auth (PINs), before the core backend.
#[derive(Debug)]
enum BackendIds {
    Staging,
    Auth,
}

#[derive(Debug)]
enum ExtensionIds {
    Chunked,
    WrapKeyToFile,
    Hpke,
    Auth,
}

impl From<ExtensionIds> for u8 {
    fn from(id: ExtensionIds) -> u8 {
        match id {
            ExtensionIds::Chunked => 0,
            ExtensionIds::WrapKeyToFile => 1,
            ExtensionIds::Hpke => 2,
            ExtensionIds::Auth => 3,
        }
    }
}

impl TryFrom<u8> for ExtensionIds {
    type Error = Error;
    fn try_from(id: u8) -> Result<Self, Error> {
        match id {
            0 => Ok(Self::Chunked),
            1 => Ok(Self::WrapKeyToFile),
            2 => Ok(Self::Hpke),
            3 => Ok(Self::Auth),
            _ => Err(Error::FunctionNotSupported),
        }
    }
}

struct Dispatcher {
    staging: StagingBackend,
    auth: AuthBackend,
}

#[derive(Default)]
struct DispatchContext {
    staging: StagingContext,
    auth: AuthContext,
}

impl ExtensionId<ChunkedExtension> for Dispatcher {
    type Id = ExtensionIds;
    const ID: ExtensionIds = ExtensionIds::Chunked;
}
impl ExtensionId<WrapKeyToFileExtension> for Dispatcher {
    type Id = ExtensionIds;
    const ID: ExtensionIds = ExtensionIds::WrapKeyToFile;
}
impl ExtensionId<HpkeExtension> for Dispatcher {
    type Id = ExtensionIds;
    const ID: ExtensionIds = ExtensionIds::Hpke;
}
impl ExtensionId<AuthExtension> for Dispatcher {
    type Id = ExtensionIds;
    const ID: ExtensionIds = ExtensionIds::Auth;
}

impl ExtensionDispatch for Dispatcher {
    type BackendId = BackendIds;
    type Context = DispatchContext;
    type ExtensionId = ExtensionIds;

    fn core_request<P: Platform>(
        &mut self,
        backend: &BackendIds,
        ctx: &mut Context<DispatchContext>,
        request: &Request,
        resources: &mut ServiceResources<P>,
    ) -> Result<Reply, Error> {
        match backend {
            BackendIds::Staging => {
                self.staging
                    .request(&mut ctx.core, &mut ctx.backends.staging, request, resources)
            }
            BackendIds::Auth => {
                self.auth
                    .request(&mut ctx.core, &mut ctx.backends.auth, request, resources)
            }
        }
    }

    fn extension_request<P: Platform>(
        &mut self,
        backend: &BackendIds,
        extension: &ExtensionIds,
        ctx: &mut Context<DispatchContext>,
        request: &request::SerdeExtension,
        resources: &mut ServiceResources<P>,
    ) -> Result<reply::SerdeExtension, Error> {
        let core = &mut ctx.core;
        match (backend, extension) {
            (BackendIds::Staging, ExtensionIds::Chunked) => {
                trussed::serde_extensions::ExtensionImpl::<ChunkedExtension>::extension_request_serialized(
                    &mut self.staging,
                    core,
                    &mut ctx.backends.staging,
                    request,
                    resources,
                )
            }
            (BackendIds::Staging, ExtensionIds::WrapKeyToFile) => {
                trussed::serde_extensions::ExtensionImpl::<WrapKeyToFileExtension>::extension_request_serialized(
                    &mut self.staging,
                    core,
                    &mut ctx.backends.staging,
                    request,
                    resources,
                )
            }
            (BackendIds::Staging, ExtensionIds::Hpke) => {
                trussed::serde_extensions::ExtensionImpl::<HpkeExtension>::extension_request_serialized(
                    &mut self.staging,
                    core,
                    &mut ctx.backends.staging,
                    request,
                    resources,
                )
            }
            (BackendIds::Auth, ExtensionIds::Auth) => self.auth.extension_request_serialized(
                core,
                &mut ctx.backends.auth,
                request,
                resources,
            ),
            _ => Err(Error::RequestNotAvailable),
        }
    }
}

const BACKENDS: &[BackendId<BackendIds>] = &[
    BackendId::Custom(BackendIds::Staging),
    BackendId::Custom(BackendIds::Auth),
    BackendId::Core,
];

/// The platform's part of the APDU exchange: command chaining and GET
/// RESPONSE around the applet.
struct Card<T: piv_authenticator::Client> {
    applet: Authenticator<T>,
    /// Data of a command chain gathered so far.
    chain: Vec<u8>,
    /// Answer bytes not yet fetched by GET RESPONSE.
    pending: Vec<u8>,
}

impl<T: piv_authenticator::Client> Card<T> {
    fn reset(&mut self) {
        self.chain.clear();
        self.pending.clear();
        self.applet.deselect();
    }

    fn answer(&mut self, apdu: &[u8]) -> Vec<u8> {
        if apdu.len() < 4 {
            return vec![0x67, 0x00];
        }
        let (cla, ins) = (apdu[0], apdu[1]);
        if ins == 0xC0 && cla & 0x10 == 0 {
            return self.next_block();
        }
        self.pending.clear();
        let full_select;
        let apdu = match select_by_truncated_aid(apdu) {
            Some(full) => {
                full_select = full;
                full_select.as_slice()
            }
            None => apdu,
        };
        let Ok(view) = iso7816::command::CommandView::try_from(apdu) else {
            return vec![0x67, 0x00];
        };
        if cla & 0x10 != 0 {
            self.chain.extend_from_slice(view.data());
            return vec![0x90, 0x00];
        }
        let whole;
        let view = if self.chain.is_empty() {
            view
        } else {
            self.chain.extend_from_slice(view.data());
            let data = std::mem::take(&mut self.chain);
            // Rebuild one extended-length command carrying the whole chain.
            let mut bytes = vec![cla, ins, apdu[2], apdu[3], 0x00];
            bytes.extend_from_slice(&(data.len() as u16).to_be_bytes());
            bytes.extend_from_slice(&data);
            bytes.extend_from_slice(&[0x00, 0x00]);
            whole = bytes;
            match iso7816::command::CommandView::try_from(whole.as_slice()) {
                Ok(view) => view,
                Err(_) => return vec![0x67, 0x00],
            }
        };
        let mut reply: heapless::Vec<u8, 7609> = heapless::Vec::new();
        let status = match self.applet.respond(view, &mut reply) {
            Ok(()) => iso7816::Status::Success,
            Err(status) => status,
        };
        if status != iso7816::Status::Success {
            let sw: u16 = status.into();
            return sw.to_be_bytes().to_vec();
        }
        self.pending = reply.to_vec();
        self.next_block()
    }

    fn next_block(&mut self) -> Vec<u8> {
        let take = self.pending.len().min(256);
        let mut out: Vec<u8> = self.pending.drain(..take).collect();
        match self.pending.len() {
            0 => out.extend_from_slice(&[0x90, 0x00]),
            left => out.extend_from_slice(&[0x61, left.min(255) as u8]),
        }
        out
    }
}

/// The PIV application's full AID (with version).
const PIV_AID: [u8; 11] = [
    0xA0, 0x00, 0x00, 0x03, 0x08, 0x00, 0x00, 0x10, 0x00, 0x01, 0x00,
];

/// A SELECT by a truncated PIV AID (`A0 00 00 03 08`, as yubico-piv-tool sends),
/// rewritten with the full AID: on a token, the platform's APDU dispatcher matches
/// truncated AIDs and the applet only sees its own.
fn select_by_truncated_aid(apdu: &[u8]) -> Option<Vec<u8>> {
    let [cla, 0xA4, 0x04, p2, lc, rest @ ..] = apdu else {
        return None;
    };
    let aid = rest.get(..usize::from(*lc))?;
    if aid.len() < 5 || aid.len() >= PIV_AID.len() || !PIV_AID.starts_with(aid) {
        return None;
    }
    let mut full = vec![*cla, 0xA4, 0x04, *p2, PIV_AID.len() as u8];
    full.extend_from_slice(&PIV_AID);
    full.push(0x00);
    Some(full)
}

fn read_message(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 2];
    stream.read_exact(&mut len)?;
    let mut payload = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut payload)?;
    Ok(payload)
}

fn write_message(stream: &mut TcpStream, payload: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(payload.len()).map_err(std::io::Error::other)?;
    let mut message = len.to_be_bytes().to_vec();
    message.extend_from_slice(payload);
    stream.write_all(&message)
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let port: u16 = match args.next() {
        Some(port) => port.parse().map_err(std::io::Error::other)?,
        None => 35963,
    };
    let host = args.next().unwrap_or_else(|| "127.0.0.1".to_owned());
    let mut stream = TcpStream::connect((host.as_str(), port))?;
    stream.set_nodelay(true)?;
    eprintln!("nitrokey-piv-vpcd: attached to vpcd at {host}:{port}");

    let dispatcher = Dispatcher {
        staging: StagingBackend::new(),
        auth: AuthBackend::new(Location::Internal, FilesystemLayout::V0),
    };
    virt::with_platform(StoreConfig::ram(), |platform| {
        platform.run_client_with_backends("piv", dispatcher, BACKENDS, |client| {
            let mut card = Card {
                applet: Authenticator::new(client, Options::default()),
                chain: Vec::new(),
                pending: Vec::new(),
            };
            loop {
                let message = read_message(&mut stream)?;
                match message.as_slice() {
                    [0] | [1] | [2] => card.reset(),
                    [4] => write_message(&mut stream, &ATR)?,
                    [_] => {}
                    apdu => {
                        let response = card.answer(apdu);
                        write_message(&mut stream, &response)?;
                    }
                }
            }
        })
    })
}
