# Cross-compiling for 64-bit ARM with Debian's g++-aarch64-linux-gnu; the target's libraries come from
# Debian multiarch (dpkg --add-architecture arm64; libhwy-dev:arm64, libgtest-dev:arm64, ... in
# /usr/lib/aarch64-linux-gnu), header-only ones (Eigen, nlohmann-json) from the host's /usr/share.
# Test programs run under qemu-user (CMAKE_CROSSCOMPILING_EMULATOR), so ctest and gtest discovery work
# as on the host. Used by scripts/test-aarch64.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
set(CMAKE_LIBRARY_ARCHITECTURE aarch64-linux-gnu)
# qemu-aarch64 runs them with the arm64 loader and libc of multiarch (libc6:arm64, in /lib; not the
# cross toolchain's older copy under /usr/aarch64-linux-gnu, which with the newer libc hangs in
# pthread_create); the CPU model comes from QEMU_CPU.
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64)
# Programs (the host's cmake, pkg-config) from the host; libraries only for the target architecture.
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
