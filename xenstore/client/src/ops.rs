//! The node operations shared by a [`Client`](crate::Client) (outside any
//! transaction) and a [`Transaction`](crate::Transaction).

use xenstore_wire::{Perm, PermList, XsError};

use crate::error::{Result, XsClientError};
use crate::request::{check_arg, parse_directory, parse_directory_part, Request};

/// How often a `DIRECTORY_PART` walk restarts because the directory changed
/// under it before giving up.
pub const DIRECTORY_PART_MAX_RESTARTS: u32 = 64;
/// Most chunks one `DIRECTORY_PART` walk fetches.
pub const DIRECTORY_PART_MAX_CHUNKS: u32 = 1 << 16;

/// Node operations. Implementors send one request in their own transaction
/// context; everything else is provided.
pub trait XsOps {
    /// Sends `req` and waits for its reply payload.
    ///
    /// # Errors
    /// [`XsClientError::Xenstore`] for an error reply, or a connection error.
    fn request(&self, req: &Request<'_>) -> Result<Vec<u8>>;

    /// The value of `path`, as bytes.
    ///
    /// # Errors
    /// `ENOENT` if the node does not exist, `EACCES` if not readable.
    fn read(&self, path: &str) -> Result<Vec<u8>> {
        self.request(&Request::Read {
            path: check_arg(path)?,
        })
    }

    /// The value of `path` as text (invalid UTF-8 replaced).
    ///
    /// # Errors
    /// As [`XsOps::read`].
    fn read_string(&self, path: &str) -> Result<String> {
        Ok(String::from_utf8_lossy(&self.read(path)?).into_owned())
    }

    /// The value of `path`, or `None` if it does not exist.
    ///
    /// # Errors
    /// As [`XsOps::read`], except `ENOENT`.
    fn read_opt(&self, path: &str) -> Result<Option<Vec<u8>>> {
        match self.read(path) {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.is_enoent() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether `path` exists.
    ///
    /// # Errors
    /// As [`XsOps::read`], except `ENOENT`.
    fn exists(&self, path: &str) -> Result<bool> {
        self.read_opt(path).map(|v| v.is_some())
    }

    /// Writes `value` at `path`, creating it (and missing parents).
    ///
    /// # Errors
    /// `EACCES`, `ENOSPC`/`E2BIG` (quota), `EINVAL` (bad path).
    fn write(&self, path: &str, value: impl AsRef<[u8]>) -> Result<()>
    where
        Self: Sized,
    {
        self.request(&Request::Write {
            path: check_arg(path)?,
            value: value.as_ref(),
        })
        .map(drop)
    }

    /// Creates `path` with an empty value if it does not exist.
    ///
    /// # Errors
    /// `EACCES`, `EINVAL`.
    fn mkdir(&self, path: &str) -> Result<()> {
        self.request(&Request::Mkdir {
            path: check_arg(path)?,
        })
        .map(drop)
    }

    /// Removes `path` and everything below it.
    ///
    /// # Errors
    /// `ENOENT` if the parent does not exist, `EACCES`.
    fn rm(&self, path: &str) -> Result<()> {
        self.request(&Request::Rm {
            path: check_arg(path)?,
        })
        .map(drop)
    }

    /// The names of the children of `path`. Falls back to `DIRECTORY_PART`
    /// when the list does not fit one reply (`E2BIG`), as libxenstore does.
    ///
    /// # Errors
    /// `ENOENT`, `EACCES`; `E2BIG` if the server has no `DIRECTORY_PART`.
    fn directory(&self, path: &str) -> Result<Vec<String>> {
        match self.request(&Request::Directory {
            path: check_arg(path)?,
        }) {
            Ok(p) => Ok(parse_directory(&p)),
            Err(e) if e.is(XsError::E2big) => self.directory_part(path),
            Err(e) => Err(e),
        }
    }

    /// The children of `path` fetched in chunks with `DIRECTORY_PART`,
    /// restarting when the directory's generation changes between chunks.
    ///
    /// # Errors
    /// As [`XsOps::directory`]; `ENOSYS` from the server becomes `E2BIG`.
    fn directory_part(&self, path: &str) -> Result<Vec<String>> {
        let path = check_arg(path)?;
        'restart: for _ in 0..DIRECTORY_PART_MAX_RESTARTS {
            let mut children = Vec::new();
            let mut generation: Option<String> = None;
            let mut offset: u32 = 0;
            for _ in 0..DIRECTORY_PART_MAX_CHUNKS {
                let reply = match self.request(&Request::DirectoryPart { path, offset }) {
                    Err(e) if e.is(XsError::Enosys) => {
                        return Err(XsClientError::Xenstore(XsError::E2big))
                    }
                    r => r?,
                };
                let part = parse_directory_part(&reply)?;
                match &generation {
                    Some(g) if *g != part.generation => continue 'restart,
                    Some(_) => {}
                    None => generation = Some(part.generation.clone()),
                }
                children.extend(part.children);
                if part.last {
                    return Ok(children);
                }
                if part.consumed == 0 {
                    return Err(XsClientError::Protocol(
                        "DIRECTORY_PART chunk made no progress".into(),
                    ));
                }
                offset = offset.checked_add(part.consumed).ok_or_else(|| {
                    XsClientError::Protocol("DIRECTORY_PART offset overflow".into())
                })?;
            }
            return Err(XsClientError::Protocol("DIRECTORY_PART did not end".into()));
        }
        Err(XsClientError::Xenstore(XsError::Eagain))
    }

    /// The permissions of `path` (the first entry is the owner).
    ///
    /// # Errors
    /// `ENOENT`, `EACCES`; [`XsClientError::Protocol`] for a malformed entry.
    fn get_perms(&self, path: &str) -> Result<Vec<Perm>> {
        let p = self.request(&Request::GetPerms {
            path: check_arg(path)?,
        })?;
        PermList::parse(&p)
            .map(|l| l.0)
            .map_err(|e| XsClientError::Protocol(e.to_string()))
    }

    /// Sets the permissions of `path` (the caller must own it or be privileged).
    ///
    /// # Errors
    /// `ENOENT`, `EACCES`, `EINVAL`.
    fn set_perms(&self, path: &str, perms: &[Perm]) -> Result<()> {
        let perms = PermList(perms.to_vec());
        self.request(&Request::SetPerms {
            path: check_arg(path)?,
            perms,
        })
        .map(drop)
    }
}
