// What a runner's generation produced (grok1, moe-run), and how it is reported: the summary line
// on stderr and the --json keys both runners share (each adds its own: the model's config,
// grok1's activations and speculation, moe-run's architecture and weight type).
//
//   RunReport r;  r.prompt = ...;
//   generate_reporting(pool, model, state, gen, out, r);   // streams text, counts storage reads
//   print_summary("grok1", r, log);
//   nlohmann::ordered_json j;
//   json_generation(j, r, out);  ...  json_run(j, r);  j["io"] = json_io(r);
//   j["residency"] = json_residency(r);  print_json(j);
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include <moe/models/weight_residency.hpp>
#include <moe/text/generate.hpp>

#include "cli.hpp"
#include "text_output.hpp"

namespace examples {

/// What one run produced, for the summary line and --json.
struct RunReport {
  std::vector<std::int32_t> prompt;
  moe::GenerateResult result;
  double load_seconds = 0;
  std::size_t threads = 0;
  std::uint64_t peak_rss = 0;
  std::uint64_t read_bytes = 0;         ///< from storage during generation
  std::uint64_t read_bytes_decode = 0;  ///< ... during the decode steps
  moe::ResidencyStats residency;
  moe::CachePolicy cache_policy{};
  std::size_t prefill_chunk = 0;
};

/// The generation options of the runners' flags: new tokens, the sampler, and `eos_id` as the
/// stop token with --stop-at-eos (none otherwise).
inline moe::GenerateOptions generate_options(const RunnerArgs& a, std::int32_t eos_id) {
  moe::GenerateOptions gen;
  gen.max_new_tokens = a.max_new_tokens;
  gen.sampler.temperature = a.temperature;
  gen.sampler.top_p = a.top_p;
  gen.sampler.seed = a.seed;
  gen.eos_id = a.stop_at_eos ? eos_id : -1;
  return gen;
}

/// moe::generate over r.prompt, streaming the text to `out`; records the storage reads of the
/// whole generation and of the decode steps (those after the first sampled token).
template <class Model>
void generate_reporting(moe::ThreadPool& pool, const Model& model, moe::DecoderState& state,
                        const moe::GenerateOptions& gen, TextOutput& out, RunReport& r) {
  const std::uint64_t read0 = storage_read_bytes();
  std::uint64_t read_first = 0;  // after prefill and the first sample
  r.result = moe::generate(pool, model, state, r.prompt, gen, [&](std::int32_t id) {
    if (read_first == 0) read_first = storage_read_bytes();
    out.token(id);
  });
  out.finish();
  const std::uint64_t read1 = storage_read_bytes();
  r.read_bytes = read1 - read0;
  r.read_bytes_decode = read_first ? read1 - read_first : 0;
}

/// "<program>: prefill N tokens in S s (R tokens/s); decode ...; peak RSS M MiB" on stderr.
inline void print_summary(const char* program, const RunReport& r, const Log& log) {
  const moe::GenerateResult& g = r.result;
  log("%s: prefill %zu tokens in %.3f s (%.2f tokens/s); decode %zu tokens in %.3f s "
      "(%.3f tokens/s); peak RSS %.1f MiB\n",
      program, g.prompt_tokens, g.prefill_seconds, g.prefill_tokens_per_second(),
      g.tokens.empty() ? std::size_t{0} : g.tokens.size() - 1, g.decode_seconds,
      g.decode_tokens_per_second(), static_cast<double>(r.peak_rss) / (1024.0 * 1024.0));
}

/// The --json keys of the generation: prompt_tokens, generated_tokens, text, stopped_at_eos.
inline void json_generation(nlohmann::ordered_json& j, const RunReport& r, const TextOutput& out) {
  j["prompt_tokens"] = r.prompt;
  j["generated_tokens"] = r.result.tokens;
  if (out.has_text()) j["text"] = out.text();
  j["stopped_at_eos"] = r.result.stopped_at_eos;
}

/// timings, peak_rss_bytes, threads.
inline void json_run(nlohmann::ordered_json& j, const RunReport& r) {
  j["timings"] = {{"load_seconds", r.load_seconds},
                  {"prefill_seconds", r.result.prefill_seconds},
                  {"prefill_tokens_per_second", r.result.prefill_tokens_per_second()},
                  {"decode_seconds", r.result.decode_seconds},
                  {"decode_tokens_per_second", r.result.decode_tokens_per_second()}};
  j["peak_rss_bytes"] = r.peak_rss;
  j["threads"] = r.threads;
}

/// The "io" object: bytes read from storage, per decoded token, and the rate over the run.
inline nlohmann::ordered_json json_io(const RunReport& r) {
  const double seconds = r.result.prefill_seconds + r.result.decode_seconds;
  const std::size_t decoded = r.result.tokens.size() > 1 ? r.result.tokens.size() - 1 : 0;
  return {{"read_bytes", r.read_bytes},
          {"read_bytes_per_decode_token",
           decoded ? static_cast<double>(r.read_bytes_decode) / static_cast<double>(decoded) : 0.0},
          {"disk_gb_per_second",
           seconds > 0 ? static_cast<double>(r.read_bytes) / seconds / 1e9 : 0.0}};
}

/// The "residency" object's shared keys (moe::ResidencyStats and the cache policy).
inline nlohmann::ordered_json json_residency(const RunReport& r) {
  const moe::ResidencyStats& s = r.residency;
  return {{"ram_budget_bytes", s.budget},
          {"model_bytes", s.model_bytes},
          {"copied_bytes", s.copied_bytes},
          {"streaming", s.streaming},
          {"attention_streamed", s.attention_streamed},
          {"cache_policy", moe::cache_policy_name(r.cache_policy)},
          {"cache_capacity_bytes", s.cache_capacity},
          {"expert_uses", s.expert_uses},
          {"cache_hit_rate", s.cache_hit_rate()},
          {"prefill_chunk", r.prefill_chunk}};
}

/// One JSON line on stdout. Invalid UTF-8 in generated text becomes U+FFFD, so the output is
/// always valid JSON.
inline void print_json(const nlohmann::ordered_json& j) {
  const std::string s = j.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
  std::fwrite(s.data(), 1, s.size(), stdout);
  std::fputc('\n', stdout);
}

}  // namespace examples
