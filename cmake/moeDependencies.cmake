# Dependencies of the moe::moe target. Shared by the build tree and (mirrored) moeConfig.cmake.
# Eigen is optional: only the moe::eigen interop target (moe/eigen.hpp) needs it.
find_package(Eigen3 3.4 QUIET NO_MODULE)  # Eigen3::Eigen (CMake has no FindEigen3 module)
find_package(xsimd 8.1 REQUIRED)  # target `xsimd` (no namespace); needs a language enabled
# Debian 12's libxsimd-dev 8.1.0-7 exports `xsimd` with INTERFACE_LINK_LIBRARIES "xtl", but does not
# depend on xtl-dev: linking then fails with "cannot find -lxtl". The headers only need xtl when
# XSIMD_ENABLE_XTL_COMPLEX is defined, so drop the bogus link item.
if(TARGET xsimd AND NOT TARGET xtl)
  set_property(TARGET xsimd PROPERTY INTERFACE_LINK_LIBRARIES "")
endif()
set(THREADS_PREFER_PTHREAD_FLAG ON)
find_package(Threads REQUIRED)
