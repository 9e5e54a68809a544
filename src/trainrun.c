/* The training loop of `nanomoe train` (and of nm_train_run): data, out_dir,
 * resume, progress, evaluation, run.h5 statistics, checkpoints, stop requests. */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "nanomoe/agree.h"
#include "nanomoe/api.h"
#include "nanomoe/ckpt.h"
#include "nanomoe/dist.h"
#include "nanomoe/resume.h"
#include "nanomoe/runstats.h"
#include "nanomoe/train.h"

/* mkdir -p */
static int make_dirs(const char *path, nm_error *err) {
    char buf[NM_PATH_MAX];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1;; p++) {
        if (*p == '/' || *p == '\0') {
            char c = *p;
            *p = '\0';
            if (mkdir(buf, 0777) != 0 && errno != EEXIST)
                return nm_fail(err, "cannot create directory '%s': %s", buf, strerror(errno));
            *p = c;
            if (!c) break;
        }
    }
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode)) return nm_fail(err, "out_dir '%s' is not a directory", path);
    return 0;
}

/* Setup that can fail on bad input. Every check that one rank can fail is
 * agreed before the next collective call, and the configuration and the data
 * must be rank 0's: an MPMD launch or a node with another copy of a file is
 * caught here, naming the ranks. */
static int prepare(int force, nm_config *cfg, nm_dataset *data, nm_error *err) {
    int ok = nm_config_validate(cfg, err) == 0;
    if (ok && !cfg->out_dir[0]) ok = nm_fail(err, "config: out_dir is empty (expected the run directory)") == 0;
    if (ok && force && cfg->resume[0])
        ok = nm_fail(err, "--force starts a new run and moves the old one aside; it cannot be combined with "
                          "resume=%s", cfg->resume) == 0;
    if (!nm_agree(MPI_COMM_WORLD, ok, err)) return -1;
    char *text = nm_malloc(64 * 1024);
    nm_config_lines(cfg, text, 64 * 1024);
    ok = nm_agree_same(MPI_COMM_WORLD, 1, "the configuration", text, err);
    free(text);
    if (!ok) return -1;
    /* every rank reads the data: a node may lack it or hold another copy */
    if (nm_dataset_load_agreed(data, cfg->data, NULL, MPI_COMM_WORLD, err) != 0) return -1;
    ok = nm_dataset_check_windows(data, cfg->block_size, cfg->data, err) == 0;
    cfg->vocab_size = data->vocab.size;
    if (ok && nm_world_rank() == 0 && make_dirs(cfg->out_dir, err) != 0) ok = 0;
    ok = nm_agree(MPI_COMM_WORLD, ok, err);
    if (ok && force) { /* the old run's files go into a folder of their own: nothing is deleted */
        char where[NM_PATH_MAX + 2 * NM_RUN_ID_MAX];
        ok = nm_run_move_aside(cfg->out_dir, MPI_COMM_WORLD, where, sizeof where, err) == 0;
        if (ok && where[0]) nm_log0("--force: moved the previous run's files to %s\n", where);
    } else if (ok && !cfg->resume[0]) {
        char **found;
        int n = nm_ckpt_list(cfg->out_dir, MPI_COMM_WORLD, &found);
        if (n > 0) {
            nm_fail(err,
                    "out_dir '%s' already holds checkpoints of an earlier run (%s); continue it with resume=auto, "
                    "choose another out_dir=..., or pass --force to start over (the old files are moved to "
                    "%s/replaced/)",
                    cfg->out_dir, found[0], cfg->out_dir);
            ok = 0;
        }
        nm_ckpt_list_free(found, n);
    }
    if (!ok) nm_dataset_free(data);
    return ok ? 0 : -1;
}

/* config.ini, and metrics.csv: new, or (resuming) cut back to the rows up to
 * the checkpoint's step and continued. Rank 0 only. */
static FILE *open_metrics(const nm_config *cfg, int64_t resume_step, nm_error *err) {
    char p[NM_PATH_MAX + 32], q[NM_PATH_MAX + 40];
    snprintf(p, sizeof p, "%s/config.ini", cfg->out_dir);
    FILE *f = fopen(p, "w");
    if (!f) {
        nm_fail(err, "cannot write '%s': %s", p, strerror(errno));
        return NULL;
    }
    fprintf(f, "; written by nanomoe train: the full configuration of this run\n");
    nm_config_print(cfg, f);
    fclose(f);
    snprintf(p, sizeof p, "%s/metrics.csv", cfg->out_dir);
    snprintf(q, sizeof q, "%s.tmp", p);
    FILE *old = resume_step >= 0 ? fopen(p, "r") : NULL;
    f = fopen(q, "w");
    if (!f) {
        if (old) fclose(old);
        nm_fail(err, "cannot write '%s': %s", q, strerror(errno));
        return NULL;
    }
    fprintf(f, "kind,step,loss,ce,aux,lr,tokens_per_s,elapsed_s,dropped\n");
    if (old) {
        char line[1024];
        while (fgets(line, sizeof line, old)) {
            char *comma = strchr(line, ',');
            if (!comma || !strncmp(line, "kind,", 5)) continue;
            if (strtoll(comma + 1, NULL, 10) <= resume_step) fputs(line, f);
        }
        fclose(old);
    }
    fflush(f);
    if (rename(q, p) != 0) {
        fclose(f);
        nm_fail(err, "cannot write '%s': %s", p, strerror(errno));
        return NULL;
    }
    return f;
}

static int save(nm_trainer *t, const nm_dataset *data, nm_error *err) {
    char p[NM_PATH_MAX + 32];
    snprintf(p, sizeof p, "%s/ckpt_%08lld.h5", t->cfg.out_dir, (long long)t->step);
    if (nm_ckpt_save(p, &t->model, &t->opt, &data->vocab, t->step, t->tokens_seen, t->run_id, err) != 0) return -1;
    nm_log0("checkpoint %s\n", p);
    nm_ckpt_prune(t->cfg.out_dir, t->cfg.keep_last, t->run_id, t->model.comm);
    nm_ckpt_remove_stale(t->cfg.out_dir, t->model.comm);
    return 0;
}

/* resume=auto|PATH: loads the checkpoint to continue from into t. Returns its
 * path in `from` ("" for a new run) and its run id in `from_id`. Under auto,
 * only the most recently started run is continued, and a checkpoint that is
 * bad for every rank is skipped with a warning; a checkpoint that only some
 * ranks cannot read is an error (the nodes see different files). */
static int resume(nm_trainer *t, const nm_config *cfg, char *from, size_t n, char *from_id, nm_error *err) {
    from[0] = from_id[0] = '\0';
    if (!cfg->resume[0]) return 0;
    int automatic = strcmp(cfg->resume, "auto") == 0;
    char **cands, *one = (char *)cfg->resume, newest[NM_RUN_ID_MAX] = "";
    int nc = automatic ? nm_ckpt_list_run(cfg->out_dir, MPI_COMM_WORLD, 1, newest, sizeof newest, &cands) : 1;
    if (!automatic) cands = &one;
    int dirty = 0, rc = 0;
    for (int i = 0; i < nc && !from[0]; i++) {
        nm_config ck;
        nm_vocab vocab;
        nm_ckpt_meta meta;
        nm_error e;
        int r = nm_ckpt_read_header(cands[i], MPI_COMM_WORLD, &ck, &vocab, &meta, &e);
        if (r == 0) {
            if (nm_resume_check_config(cfg, &ck, cands[i], err) != 0) {
                rc = -1;
                break;
            }
            dirty = 1;
            r = nm_trainer_resume(t, cands[i], &e);
            if (r == 0) {
                snprintf(from, n, "%s", cands[i]);
                snprintf(from_id, NM_RUN_ID_MAX, "%s", meta.run_id);
                break;
            }
        }
        if (!automatic || r != -2) {
            if (automatic) nm_fail(err, "resume=auto: %s", e.msg);
            else nm_fail(err, "resume=%s: %s", cands[i], e.msg);
            rc = -1;
            break;
        }
        nm_warn0("ignoring checkpoint %s: %s", cands[i], e.msg);
    }
    if (automatic) nm_ckpt_list_free(cands, nc);
    if (rc == 0 && !from[0]) {
        nm_log0("resume=auto: no valid checkpoint in %s: starting a new run\n", cfg->out_dir);
        if (dirty) { /* a checkpoint that failed half-way left its values behind */
            nm_params_init(&t->model.layout, cfg->seed, t->model.params[0], t->model.params[1]);
            nm_adamw_free(&t->opt);
            nm_adamw_init(&t->opt, &t->model.layout, cfg);
            t->step = t->tokens_seen = 0;
            t->run_id[0] = '\0';
        }
    }
    return rc;
}

static void print_header(const nm_trainer *t, const nm_dataset *data) {
    const nm_config *cfg = &t->cfg;
    nm_param_counts pc = nm_param_count(cfg);
    char a[32], b[32], d[32], e[32];
    nm_format_count((double)pc.total, a, sizeof a);
    nm_format_count((double)pc.dense, b, sizeof b);
    nm_format_count((double)pc.experts, d, sizeof d);
    nm_format_count((double)pc.active_per_token, e, sizeof e);
    long tok_step = (long)cfg->batch_size * cfg->block_size;
    nm_log0("nanomoe train: out_dir %s\n", cfg->out_dir);
    nm_log0("data %s: %zu characters, vocab %d, train %zu, val %zu\n", cfg->data, data->n_tokens, data->vocab.size,
            data->n_train, data->n_tokens - data->n_train);
    nm_log0("model: %s parameters (dense %s, experts %s; active per token %s)\n", a, b, d, e);
    nm_log0("training: %d steps of %d x %d = %ld tokens, lr %.1e (%s)\n", cfg->max_iters, cfg->batch_size,
            cfg->block_size, tok_step, cfg->learning_rate, cfg->lr_schedule);
    const nm_dist *dd = &t->model.dist;
    nm_log0("ranks: %d x %d thread(s); expert_parallel %d (%d expert(s) per rank per layer), %d cop%s of each "
            "expert\n",
            dd->size, t->model.nthreads, dd->ep, cfg->n_experts / dd->ep, dd->size / dd->ep,
            dd->size / dd->ep == 1 ? "y" : "ies");
    int G, tree;
    nm_error err;
    nm_grad_chunks_plan(cfg, dd->size, &G, &tree, &err);
    if (tree && dd->ep == dd->size)
        nm_log0("gradients: summed as a fixed tree over %d batch slices: bit-identical to runs on the other "
                "power-of-two rank counts that divide %d and keep one copy of each expert\n",
                G, G);
    else if (tree)
        nm_log0("gradients: summed as a fixed tree over %d batch slices; expert replicas add their sums, so "
                "results differ from other rank counts at float rounding\n",
                G);
    else
        nm_log0("gradients: summed by MPI_Allreduce (%d ranks cannot follow the fixed tree over %d slices): results "
                "differ from other rank counts at float rounding\n",
                dd->size, G);
    if (cfg->capacity_factor > 0)
        nm_log0("capacity: %.3g x an even share = %ld token copies per expert and layer\n", cfg->capacity_factor,
                (long)ceil(cfg->capacity_factor * tok_step * cfg->top_k / cfg->n_experts));
}

int nm_train_run(const nm_config *cfg_in, const nm_run_options *opt, nm_error *err) {
    if (!cfg_in) return nm_fail(err, "nm_train_run: cfg is NULL");
    if (nm_ensure_mpi() != 0) return nm_fail(err, "nm_train_run: MPI could not be started");
    nm_config cfg = *cfg_in;
    nm_dataset data;
    if (prepare(opt ? opt->force : 0, &cfg, &data, err) != 0) return -1;
    nm_trainer t;
    if (nm_trainer_init(&t, &cfg, &data, MPI_COMM_WORLD, err) != 0) {
        nm_dataset_free(&data);
        return -1;
    }
    print_header(&t, &data);
    char from[NM_PATH_MAX];
    char from_id[NM_RUN_ID_MAX];
    if (resume(&t, &cfg, from, sizeof from, from_id, err) != 0) {
        nm_trainer_free(&t);
        nm_dataset_free(&data);
        return -1;
    }
    int64_t start = t.step;
    if (from[0]) nm_log0("resuming from %s at step %lld\n", from, (long long)start);
    if (!t.run_id[0]) { /* a new run (or one continued from a file without an id): rank 0 names it */
        if (nm_world_rank() == 0) nm_run_id_new(t.run_id, sizeof t.run_id);
        nm_bcast_text(MPI_COMM_WORLD, t.run_id, sizeof t.run_id);
    }
    nm_log0("run id %s\n", t.run_id);

    /* run.h5 first: its checks are the last that can refuse the start, and
     * a refused start must leave config.ini and metrics.csv as they were */
    nm_run_stats rs;
    char runpath[NM_PATH_MAX + 16];
    snprintf(runpath, sizeof runpath, "%s/run.h5", cfg.out_dir);
    if (nm_run_stats_open(&rs, runpath, &t.model, &data.vocab, cfg.stats_interval, from[0] ? start : -1, t.run_id,
                          from_id, err) != 0) {
        nm_trainer_free(&t);
        nm_dataset_free(&data);
        return -1;
    }
    FILE *metrics = NULL;
    int ok = 1;
    if (nm_world_rank() == 0 && !(metrics = open_metrics(&cfg, from[0] ? start : -1, err))) ok = 0;
    if (!nm_agree(MPI_COMM_WORLD, ok, err)) {
        nm_run_stats_close(&rs);
        nm_trainer_free(&t);
        nm_dataset_free(&data);
        return -1;
    }

    /* test hook NANOMOE_FAULT=kill-at-step=N: every rank dies after step N */
    const char *fault = getenv("NANOMOE_FAULT");
    long kill_at = fault && !strncmp(fault, "kill-at-step=", 13) ? strtol(fault + 13, NULL, 10) : -1;
    long tok_step = (long)cfg.batch_size * cfg.block_size;
    double t_start = nm_now(), t_train = 0.0, t_interval = 0.0, t_stats = 0.0;
    int interval_steps = 0, stats_steps = 0, rc = 0, stopped = 0;
    if (start >= cfg.max_iters) nm_log0("nothing to do: step %lld reaches max_iters=%d\n", (long long)start, cfg.max_iters);
    for (int step = (int)start + 1; step <= cfg.max_iters; step++) {
        double t0 = nm_now();
        nm_losses l = nm_train_step(&t);
        double dt = nm_now() - t0;
        t_train += dt;
        t_interval += dt;
        t_stats += dt;
        interval_steps++;
        stats_steps++;
        nm_run_stats_step(&rs, &t.model, t.x);
        double lr = nm_lr_at(&cfg, step);
        double dropped = 0.0;
        for (int li = 0; li < cfg.n_layers; li++) dropped += t.model.dropped[li];
        /* all ranks agree whether a signal asked to stop */
        int sig = opt && opt->stop ? *opt->stop : 0;
        if (t.model.nranks > 1) NM_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &sig, 1, MPI_INT, MPI_MAX, t.model.comm));
        /* a stop request checkpoints at once: no evaluation first (the time
         * before a preemption's SIGKILL is short) */
        int end = step == cfg.max_iters, ckpt_due = (cfg.ckpt_interval > 0 && step % cfg.ckpt_interval == 0) || end || sig;
        if (step % cfg.log_interval == 0 || step == start + 1 || end || sig) {
            double tps = interval_steps * tok_step / t_interval;
            char eta[32], drop[64] = "";
            nm_format_duration(t_train / (step - start) * (cfg.max_iters - step), eta, sizeof eta);
            if (cfg.capacity_factor > 0)
                snprintf(drop, sizeof drop, " | dropped %.0f (%.2f%%)", dropped,
                         100.0 * dropped / ((double)tok_step * cfg.top_k * cfg.n_layers));
            nm_log0("step %d/%d | loss %.4f | ce %.4f | aux %.4f | lr %.1e | %.0f tok/s | eta %s%s\n", step,
                    cfg.max_iters, l.loss, l.ce, l.aux, lr, tps, eta, drop);
            if (metrics) {
                fprintf(metrics, "train,%d,%.6f,%.6f,%.6f,%.6g,%.1f,%.3f,%.0f\n", step, l.loss, l.ce, l.aux, lr, tps,
                        nm_now() - t_start, dropped);
                fflush(metrics);
            }
            t_interval = 0.0;
            interval_steps = 0;
        }
        if (cfg.eval_interval > 0 && (step == 1 || step % cfg.eval_interval == 0 || end)) {
            nm_losses v = nm_evaluate(&t);
            nm_run_stats_eval(&rs, v.loss);
            char summary[1024];
            nm_run_stats_summary(&rs, summary, sizeof summary);
            nm_log0("eval step %d | val %.4f | ce %.4f | aux %.4f\n", step, v.loss, v.ce, v.aux);
            nm_log0("routing step %d | %s\n", step, summary);
            if (metrics) {
                fprintf(metrics, "eval,%d,%.6f,%.6f,%.6f,%.6g,,%.3f,\n", step, v.loss, v.ce, v.aux, lr,
                        nm_now() - t_start);
                fflush(metrics);
            }
        }
        /* a row with every checkpoint: a resumed run.h5 then equals an uninterrupted one */
        if (step % cfg.stats_interval == 0 || ckpt_due) {
            if (nm_run_stats_write(&rs, &t.model, step, lr, stats_steps * tok_step / t_stats, err) != 0) {
                rc = -1;
                break;
            }
            t_stats = 0.0;
            stats_steps = 0;
        }
        if (ckpt_due) {
            if (save(&t, &data, err) != 0) {
                rc = -1;
                break;
            }
        }
        if (kill_at == step) raise(SIGKILL); /* test hook: a crash right after this step */
        if (sig) {
            nm_log0("stopping after step %d on %s\n", step,
                    sig == SIGUSR1 ? "SIGUSR1" : sig == SIGTERM ? "SIGTERM" : "a stop request");
            stopped = 1;
            break;
        }
    }
    if (rc == 0 && !stopped && t.step > start) {
        char tot[32];
        nm_format_duration(nm_now() - t_start, tot, sizeof tot);
        nm_log0("done: %lld steps in %s, %.0f tok/s over training steps\n", (long long)(t.step - start), tot,
                (double)(t.step - start) * tok_step / t_train);
    }
    if (nm_run_stats_close(&rs) != 0 && rc == 0) rc = nm_fail(err, "cannot write %s: closing it failed", runpath);
    if (metrics) fclose(metrics);
    nm_trainer_free(&t);
    nm_dataset_free(&data);
    return rc;
}
