//! Guest memory of a restored microVM, the two ways it can come: mapped from the
//! snapshot's memory file, or filled by a page server. Each has its own error type.

use reap_pager::region::{PAGE_4K, Region};
use reap_pager::uffd::{Uffd, UffdError};
use reap_pager::{MemoryFile, PageServer, PagerError, Resolved, ServeOptions, WsPolicy};

use crate::vstate::memory::{GuestMemory, MemoryError};

/// Errors mapping guest memory from the memory file.
#[derive(Debug, thiserror::Error)]
pub enum FileMemoryError {
    /// The private mapping of the file failed.
    #[error("cannot map the memory file")]
    Map(#[source] MemoryError),
    /// The file cannot be duplicated for the mapping.
    #[error("cannot reopen the memory file")]
    Reopen(#[source] std::io::Error),
}

/// Errors setting up guest memory served by the page server.
#[derive(Debug, thiserror::Error)]
pub enum PagedMemoryError {
    /// The anonymous guest memory cannot be mapped.
    #[error("cannot map guest memory")]
    Map(#[source] MemoryError),
    /// No userfaultfd.
    #[error("userfaultfd")]
    Uffd(#[source] UffdError),
    /// Registering guest memory with the userfaultfd failed.
    #[error("cannot register guest memory with userfaultfd (errno {0})")]
    Register(i32),
    /// The guest memory given is not the size of the memory file.
    #[error("guest memory of {guest} bytes for a memory file of {file} bytes")]
    Size {
        /// The guest memory's size.
        guest: u64,
        /// The memory file's.
        file: u64,
    },
    /// The page server did not start.
    #[error("page server")]
    Pager(#[source] PagerError),
}

/// Maps the memory file privately: the kernel faults pages in (`file` mode).
pub fn from_file(memory: &MemoryFile) -> Result<GuestMemory, FileMemoryError> {
    let file = memory.file().try_clone().map_err(FileMemoryError::Reopen)?;
    GuestMemory::private_file(file, memory.len()).map_err(FileMemoryError::Map)
}

/// Guest memory filled by a page server, as `policy` resolves now.
pub struct PagedMemory {
    /// The guest memory, registered with the server's userfaultfd.
    pub memory: GuestMemory,
    /// The running page server.
    pub server: PageServer,
    /// What the server was started to do (and where a recording goes).
    pub resolved: Resolved,
}

/// Anonymous guest memory the size of `memory`, registered with a new userfaultfd and
/// served from `memory` by a page server in the mode `policy` resolves to now, with
/// `options` (in prefetch mode the working set is installed before this returns; by
/// default the memory file's holes are left to the kernel).
pub fn from_page_server(
    memory: MemoryFile,
    policy: &WsPolicy,
    options: ServeOptions,
) -> Result<PagedMemory, PagedMemoryError> {
    let guest = GuestMemory::anonymous(memory.len()).map_err(PagedMemoryError::Map)?;
    from_page_server_over(memory, policy, options, guest)
}

/// [`from_page_server`] over `guest`, fresh anonymous guest memory the size of
/// `memory` that the caller made (e.g. a VM shell's, [`crate::vstate::shell`]).
pub fn from_page_server_over(
    memory: MemoryFile,
    policy: &WsPolicy,
    options: ServeOptions,
    guest: GuestMemory,
) -> Result<PagedMemory, PagedMemoryError> {
    let size = memory.len();
    if guest.size() != size {
        return Err(PagedMemoryError::Size {
            guest: guest.size(),
            file: size,
        });
    }
    let uffd = Uffd::new().map_err(PagedMemoryError::Uffd)?;
    uffd.register(guest.host_addr(), size)
        .map_err(|e| PagedMemoryError::Register(e.0))?;
    let region = Region {
        host_addr: guest.host_addr(),
        len: size,
        file_offset: 0,
        page_size: PAGE_4K,
    };
    let resolved = policy.resolve();
    let server = PageServer::start_with(uffd, vec![region], memory, resolved.mode.clone(), options)
        .map_err(PagedMemoryError::Pager)?;
    Ok(PagedMemory {
        memory: guest,
        server,
        resolved,
    })
}
