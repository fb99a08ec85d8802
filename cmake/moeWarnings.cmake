# moe_configure_target(<target>): warnings and -march=native for moe's OWN tests, examples and
# benchmarks. Everything is PRIVATE: nothing here reaches consumers of moe::moe.
function(moe_configure_target target)
  target_compile_options(
    ${target}
    PRIVATE -Wall -Wextra -Wpedantic -Wshadow
            $<$<BOOL:${MOE_WARNINGS_AS_ERRORS}>:-Werror>
            # GCC 12 false positives in libstdc++'s std::string at -O3 (GCC bug 105329/105651)
            $<$<CXX_COMPILER_ID:GNU>:-Wno-restrict>
            $<$<BOOL:${MOE_NATIVE}>:-march=native>)
  target_compile_features(${target} PRIVATE cxx_std_20)
endfunction()
