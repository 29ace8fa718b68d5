// assocmem/io.hpp - how assocmem reads and writes user files, so that nothing is lost and nothing
// blocks or crashes. Every writer (stores, .npy, JSON/CSV outputs, in C++, the CLI and Python) goes
// through write_file_atomically; every reader opens through InputFile. docs/reliability.md lists
// the promises and the tests that prove them.
//
// Outputs
//  - A path that does not exist is created; a regular file is replaced atomically (temporary file in
//    the same folder, fsync, rename, fsync of the folder): a crash or kill -9 at any moment leaves
//    the old file or the new one, never a mix.
//  - A symbolic link is written through: its final target is replaced and the link stays.
//  - Anything else (directory, FIFO, socket, device such as /dev/null) is refused with IoError.
//  - New files get the mode 0666 & ~umask; a replaced file keeps its mode (and owner and group where
//    the process may set them).
//  - check_distinct refuses an output that is the same file as an input or as another output
//    (compared by device and inode, or by resolved path for files not yet written).
// Locking
//  - Writers take an exclusive flock on the folder that holds the target (FolderLock) for as long as
//    their temporary file exists; read-modify-write sequences (appending to a store) hold it across
//    the read. The lock is re-entrant within a process. Readers take no lock.
// Temporaries
//  - are named ".assocmem-tmp.<random>" in the target's folder. Because a writer holds the folder
//    lock while its temporary exists, any such file found by the next writer in that folder (once
//    it holds the lock) was left by a killed writer, and is removed.
//  - install_signal_cleanup() (the CLI calls it) removes the temporaries in flight on SIGINT,
//    SIGTERM and SIGHUP, then lets the signal end the process as it would have.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "assocmem/error.hpp"

namespace assocmem {

/// a * b for sizes, or InvalidArgument naming `what` when the product does not fit in size_t.
std::size_t checked_mul(std::size_t a, std::size_t b, const char* what);
/// a + b for sizes, or InvalidArgument naming `what`.
std::size_t checked_add(std::size_t a, std::size_t b, const char* what);
/// InvalidArgument naming `what` when `bytes` exceed this machine's physical memory (an allocation
/// that could only end in std::bad_alloc or the out-of-memory killer).
void check_fits_in_memory(std::size_t bytes, const char* what);

/// A file opened for reading: opened without blocking (a FIFO given by mistake does not hang) and
/// refused unless it is a regular file. Errors are IoError naming `what` and the path.
class InputFile {
 public:
  InputFile(const std::string& path, const std::string& what = "file");
  ~InputFile();
  InputFile(const InputFile&) = delete;
  InputFile& operator=(const InputFile&) = delete;

  int fd() const { return fd_; }
  std::size_t size() const { return size_; }
  const std::string& path() const { return path_; }
  /// Reads exactly n bytes at offset; IoError when the file is shorter (it may have shrunk).
  void read_at(std::size_t offset, void* out, std::size_t n) const;
  /// The whole file (up to max_bytes, else IoError).
  std::string read_all(std::size_t max_bytes) const;

 private:
  int fd_ = -1;
  std::size_t size_ = 0;
  std::string path_, what_;
};

/// Where a write to `path` lands: the final target of a chain of symbolic links (relative links
/// resolved against the link's folder), as given otherwise. IoError for a link loop.
std::string resolve_output(const std::string& path);

/// Refuses (InvalidArgument, exit 2 in the CLI) an output that is the same file as an input or as
/// another output. Each entry is (role, path), e.g. {"store", "mem.amem"}; empty paths are skipped.
void check_distinct(const std::vector<std::pair<std::string, std::string>>& inputs,
                    const std::vector<std::pair<std::string, std::string>>& outputs);

/// An exclusive, re-entrant lock of the folder that holds `path` (see the top of this file).
/// Acquiring it removes temporaries left by killed writers in that folder.
class FolderLock {
 public:
  explicit FolderLock(const std::string& path);
  ~FolderLock();
  FolderLock(const FolderLock&) = delete;
  FolderLock& operator=(const FolderLock&) = delete;

 private:
  std::string key_;
};

/// Writes the concatenation of `parts` to `path` atomically, under the folder lock, following the
/// output rules above. Throws IoError naming the path. Inside an OutputBatch (below) the file is only
/// staged: its temporary is written and synced, and renamed onto `path` when the batch commits.
void write_file_atomically(const std::string& path, const std::vector<std::pair<const void*, std::size_t>>& parts);

/// All outputs of one command, committed together or not at all (issue 23: a command with two outputs
/// replaced the first and then failed on the second). While a batch exists, every
/// write_file_atomically on its thread (stores, codes, .npy, JSON, CSV, PNG) writes and syncs its
/// temporary and keeps it, holding the folder lock; commit() renames them all onto their targets in
/// the order they were written; a batch destroyed without commit() removes them, so a failure anywhere
/// (an unwritable second output, a full disk, an exception between the writes) replaces nothing.
/// Renames within a folder do not fail in practice once the temporaries exist; if one does, the files
/// renamed before it stay and the error names the one that failed. Batches nest (the innermost is
/// active); commit() makes the enclosing one active again.
class OutputBatch {
 public:
  OutputBatch();
  ~OutputBatch();
  OutputBatch(const OutputBatch&) = delete;
  OutputBatch& operator=(const OutputBatch&) = delete;
  void commit();
  std::size_t staged() const;  ///< files waiting for commit()
  /// Called while each file of this batch is written, with the bytes written so far and the file's
  /// size (every 64 MiB and at the end; the sync after it is not counted): the command-line tool draws
  /// its progress bar from it, so a command that writes a large store shows how far it is.
  void on_progress(std::function<void(std::size_t written, std::size_t total)> progress);

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
  friend void write_file_atomically(const std::string&, const std::vector<std::pair<const void*, std::size_t>>&);
};

/// A path removed when this object is destroyed, and by the signal cleanup when the process is
/// interrupted (a plot's intermediate CSV, a temporary file).
class TempPath {
 public:
  explicit TempPath(std::string path);
  ~TempPath();
  TempPath(const TempPath&) = delete;
  TempPath& operator=(const TempPath&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  int slot_ = -1;
};

/// A new private folder under $TMPDIR (or /tmp) removed with its files on destruction or signal.
class TempFolder {
 public:
  TempFolder();
  ~TempFolder();
  TempFolder(const TempFolder&) = delete;
  TempFolder& operator=(const TempFolder&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  int slot_ = -1;
};

/// Installs handlers for SIGINT, SIGTERM and SIGHUP that remove the registered temporaries and then
/// re-raise the signal with its default action. For programs (the CLI); a library user that has its
/// own handlers need not call it: temporaries of killed writers are removed by the next writer.
void install_signal_cleanup();

namespace detail {
/// write_file_atomically outside any OutputBatch: renamed at once (intermediate files a child process
/// reads, such as a plot's data).
void write_file_now(const std::string& path, const std::vector<std::pair<const void*, std::size_t>>& parts);

/// A child process (e.g. the plotter the CLI runs) that the signal cleanup kills and reaps before it
/// removes the temporaries, so that the child cannot write into them meanwhile; 0 clears it.
void set_cleanup_child(pid_t pid);

/// Read-only mappings of files guarded against SIGBUS: when the file shrinks under the mapping, the
/// handler maps zero pages over the rest of it and marks it, so the process lives; the owner checks
/// the mark (faulted) after reading and throws. Returns a slot id, or -1 when the registry is full.
int guard_mapping(const void* base, std::size_t length);
void unguard_mapping(int slot);
bool mapping_faulted(int slot);
}  // namespace detail

}  // namespace assocmem
