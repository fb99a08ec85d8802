// grok1's MPI mode: `mpirun -np N grok1 --checkpoint DIR ...` runs the model tensor-parallel over
// the N ranks (moe/mpi/tensor_parallel.hpp; docs/distributed.md). Same flags and outputs as a
// single process; rank 0 prints. Each rank maps the checkpoint files and touches only its
// shard: its heads' columns of the attention projections and its 1/N of every expert's hidden
// units (the column slabs copied into its memory while loading: moe/mpi/shard.hpp), its
// vocabulary slice of the head and the embedding rows it looks up. --ram-budget,
// --cache-policy, --speculation and --no-huge-readahead do not apply (no weight streaming:
// each rank's shard is meant to fit in its RAM); --perplexity and --activations int8 are not
// available yet (usage error, exit 2).
//
// Errors while loading (a rank cannot open its files, a dimension N does not split) reach every
// rank (Communicator::agree): rank 0 prints the failing rank's message and every rank exits with
// status 1. An error during generation prints on its rank and ends the job (MPI_Abort).
//
// Included by main.cpp inside its anonymous namespace, after Args, Log, Report, TextOutput and
// the helpers this file uses; <moe/mpi/tensor_parallel.hpp> is included at the top of main.cpp.

/// Copies of the column slabs (moe/mpi/shard.hpp) when the copies of the `node_ranks` ranks on
/// this machine fit in 80% of its available memory (moe::default_ram_budget), else views: a
/// shard that does not fit stays in the page cache, which can evict and re-read it.
moe::mpi::ShardOptions slab_options(const moe::grok1::Config& c, const moe::mpi::ShardPlan& plan,
                                    std::size_t node_ranks) {
  moe::mpi::ShardOptions o;
  const std::uint64_t budget = moe::default_ram_budget();
  if (budget != 0 && moe::mpi::column_copy_bytes(c, plan) * node_ranks > budget) {
    o.column_slabs = moe::mpi::SlabStorage::kInPlace;
  }
  return o;
}

/// One rank's checkpoint, shard views, shard model and the whole-model wrapper.
struct ShardLoaded {
  moe::grok1::Checkpoint ckpt;
  moe::mpi::ShardPlan plan;
  moe::mpi::ShardWeights weights;
  moe::grok1::Model shard;
  moe::mpi::TensorParallel<moe::grok1::Model> model;

  ShardLoaded(const std::filesystem::path& dir, const moe::grok1::OpenOptions& options,
              moe::mpi::Communicator& comm, std::size_t node_ranks)
      : ckpt(moe::grok1::Checkpoint::open(dir, options)),
        plan(moe::mpi::plan_shard(ckpt.config(), comm.size(), comm.rank())),
        weights(moe::mpi::bind_shard(ckpt, plan, slab_options(ckpt.config(), plan, node_ranks))),
        shard(moe::mpi::make_shard_model(weights)),
        model(comm, shard, plan) {}
};

/// The --json keys of MPI mode: ranks, per-rank peak RSS and shard bytes, communication totals.
void add_tensor_parallel_json(nlohmann::ordered_json& j, moe::mpi::Communicator& comm,
                              const ShardLoaded& m, const moe::DecoderProfile& prof,
                              const std::vector<std::uint64_t>& rss) {
  const std::vector<std::uint64_t> shard = comm.all_gather(m.weights.shard_bytes());
  const std::vector<std::uint64_t> pages = comm.all_gather(m.weights.page_bytes());
  const std::vector<std::uint64_t> copied = comm.all_gather(
      m.weights.slab_data.size() + m.weights.slab_scales.size() * sizeof(moe::bf16));
  const moe::mpi::CommStats& s = comm.stats();
  j["ranks"] = comm.size();
  j["rank_peak_rss_bytes"] = rss;
  j["rank_shard_bytes"] = shard;
  j["rank_shard_page_bytes"] = pages;
  j["rank_copied_slab_bytes"] = copied;
  const double compute = prof.total() - prof.reduce;
  j["tensor_parallel"] = {{"all_reduces", s.all_reduces},
                          {"all_reduce_bytes", s.all_reduce_bytes},
                          {"all_reduce_seconds", s.all_reduce_seconds},
                          {"logit_gathers", s.gathers},
                          {"logit_gather_bytes", s.gather_bytes},
                          {"logit_gather_seconds", s.gather_seconds},
                          {"forward_calls", prof.calls},
                          {"compute_seconds", compute},
                          {"profile_seconds",
                           {{"embedding", prof.embedding},
                            {"norms", prof.norms},
                            {"attention", prof.attention},
                            {"ffn", prof.ffn},
                            {"head", prof.head},
                            {"reduce", prof.reduce}}}};
}

/// TokenError unless every prompt id is in the vocabulary (generate() would find it too, but
/// after agree(), on every rank at once).
void check_prompt_ids(const std::vector<std::int32_t>& prompt, std::size_t vocab) {
  for (std::size_t t = 0; t < prompt.size(); ++t) {
    if (prompt[t] < 0 || static_cast<std::size_t>(prompt[t]) >= vocab) {
      throw moe::TokenError("[grok1] prompt token id " + std::to_string(prompt[t]) + " at index " +
                            std::to_string(t) + " is outside the vocabulary [0, " +
                            std::to_string(vocab) + ")");
    }
  }
}

int run_tensor_parallel(const Args& args, moe::mpi::Communicator& comm) {
  const bool root = comm.rank() == 0;
  const Log log{args.json || !root, root && isatty(fileno(stderr)) != 0};
  const auto t_load = Clock::now();
  std::optional<Tokenizer> tokenizer;
  std::optional<ShardLoaded> m;
  Report r;
  std::string error;
  const std::size_t node_ranks = comm.node_size();  // collective: before anything can throw
  try {
    tokenizer.emplace(load_tokenizer(args));
    moe::grok1::OpenOptions open_options;
    open_options.progress = validation_progress(log);
    m.emplace(args.checkpoint, open_options, comm, node_ranks);
    r.prompt = prompt_ids(args, *tokenizer, m->ckpt.config());
    check_prompt_ids(r.prompt, m->ckpt.config().vocab_size);  // before agree(): one message
  } catch (const std::exception& e) {
    error = e.what();
  }
  comm.agree(error);  // every rank throws the first failing rank's error
  const moe::grok1::Config& cfg = m->ckpt.config();
  log("grok1: %s\n", m->ckpt.summary().c_str());
  log("grok1: tensor parallel over %zu ranks (rank 0: query heads [%zu, %zu), KV heads [%zu, %zu), "
      "d_ff [%zu, %zu), vocabulary [%zu, %zu); %.2f GB of weights per rank, %.2f GB of them "
      "copied)\n",
      comm.size(), m->plan.q_heads.begin, m->plan.q_heads.end, m->plan.kv_heads.begin,
      m->plan.kv_heads.end, m->plan.ff.begin, m->plan.ff.end, m->plan.vocab.begin,
      m->plan.vocab.end, static_cast<double>(m->weights.shard_bytes()) / 1e9,
      static_cast<double>(m->weights.slab_data.size()) / 1e9);

  moe::ThreadPool pool(args.threads);
  r.prefill_chunk = args.prefill_chunk ? args.prefill_chunk : 256;
  moe::DecoderState state = m->model.make_state(r.prompt.size() + args.max_new_tokens,
                                                std::min(r.prompt.size(), r.prefill_chunk));
  r.load_seconds = seconds_since(t_load);
  r.threads = pool.size();
  log("grok1: loaded in %.2f s; %zu prompt tokens, %zu threads per rank\n", r.load_seconds,
      r.prompt.size(), pool.size());

  moe::GenerateOptions gen = examples::generate_options(args, cfg.eos_id);
  moe::DecoderProfile prof;
  gen.profile = &prof;
  moe::Buffer<float> prompt_logits;
  if (args.dump_logits) {
    prompt_logits = moe::Buffer<float>(r.prompt.size() * cfg.vocab_size);
    gen.prompt_logits = {prompt_logits.data(), r.prompt.size(), cfg.vocab_size};
  }
  TextOutput out(*tokenizer, log.quiet);
  if (root) out.prompt(args.prompt);
  comm.reset_stats();
  r.result = moe::generate(pool, m->model, state, r.prompt, gen, [&](std::int32_t id) {
    if (root) out.token(id);
  });
  if (root) out.finish();
  if (args.dump_logits && root) {
    moe::io::write_npy(*args.dump_logits, prompt_logits.data(), {r.prompt.size(), cfg.vocab_size});
    log("grok1: wrote prompt logits [%zu, %zu] to %s\n", r.prompt.size(), cfg.vocab_size,
        args.dump_logits->c_str());
  }
  r.peak_rss = peak_rss_bytes();
  const std::vector<std::uint64_t> rss = comm.all_gather(r.peak_rss);
  const moe::mpi::CommStats& s = comm.stats();
  examples::print_summary("grok1", r, log);
  log("grok1: %zu all-reduces (%.1f MB, %.3f s), %zu logit gathers (%.3f s); peak RSS per rank",
      s.all_reduces, static_cast<double>(s.all_reduce_bytes) / 1e6, s.all_reduce_seconds, s.gathers,
      s.gather_seconds);
  for (std::uint64_t b : rss) log(" %.1f", static_cast<double>(b) / (1024.0 * 1024.0));
  log(" MiB\n");
  nlohmann::ordered_json j;
  if (args.json) {
    j = json_report(r, cfg, out);
    add_tensor_parallel_json(j, comm, *m, prof, rss);
  }
  if (args.json && root) print_json(j);
  return 0;
}

/// main() under mpirun: MPI up, arguments parsed (rank 0 reports usage errors), then the run.
int main_tensor_parallel(int argc, char** argv) {
  moe::mpi::Session session(argc, argv);
  moe::mpi::Communicator comm;
  const bool root = comm.rank() == 0;
  Args args;
  try {
    args = parse_args(argc, argv);
    // Not in MPI mode (yet): say so rather than ignore them.
    if (args.perplexity) throw UsageError("--perplexity is not available under mpirun");
    if (args.activations != grok1_example::Activations::kExact) {
      throw UsageError("--activations int8 is not available under mpirun");
    }
  } catch (const UsageError& e) {
    if (root) std::fprintf(stderr, "grok1: error: %s\n\n%s", e.what(), kUsage);
    return 2;
  }
  try {
    return run_tensor_parallel(args, comm);
  } catch (const moe::mpi::RankError& e) {
    // Loading failed on some rank; every rank got the message: rank 0 reports, all exit.
    if (root) std::fprintf(stderr, "\ngrok1: error: %s\n", e.what());
    return 1;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "\ngrok1: error (rank %zu of %zu): out of memory\n", comm.rank(),
                 comm.size());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "\ngrok1: error (rank %zu of %zu): %s\n", comm.rank(), comm.size(),
                 e.what());
  }
  std::fflush(stderr);
  comm.abort(1);  // the other ranks may be waiting in a collective
}
