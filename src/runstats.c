/* Per-run metrics and routing statistics in run.h5 (parallel HDF5). Every
 * rank makes the same collective calls; rank 0 writes each row's values, the
 * others select nothing. HDF5 failures go through rs->h5 (NM_H5_TRY): an
 * error returned on one process, an abort of every rank on several. */
#include "nanomoe/runstats.h"

#include <errno.h>
#include <hdf5.h>
#include <unistd.h>

#include "nanomoe/agree.h"
#include "nanomoe/h5util.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ROWS_PER_CHUNK 64

static const char *METRICS[] = {"loss", "ce", "aux", "lr", "tokens_per_s", "val_loss"};
#define NMETRICS 6

/* A dataset (chunked when chunk is not NULL), with its intermediate groups. */
static void create_dataset(nm_h5_try *t, hid_t loc, const char *name, hid_t type, int ndim, const hsize_t *dims,
                           const hsize_t *maxd, const hsize_t *chunk) {
    hid_t sp = NM_H5_TRY(t, H5Screate_simple(ndim, dims, maxd));
    hid_t dcpl = NM_H5_TRY(t, H5Pcreate(H5P_DATASET_CREATE));
    if (chunk) NM_H5_TRY(t, H5Pset_chunk(dcpl, ndim, chunk));
    hid_t lcpl = NM_H5_TRY(t, H5Pcreate(H5P_LINK_CREATE));
    NM_H5_TRY(t, H5Pset_create_intermediate_group(lcpl, 1));
    hid_t d = NM_H5_TRY(t, H5Dcreate2(loc, name, type, sp, lcpl, dcpl, H5P_DEFAULT));
    if (d >= 0) H5Dclose(d);
    if (lcpl >= 0) H5Pclose(lcpl);
    if (dcpl >= 0) H5Pclose(dcpl);
    if (sp >= 0) H5Sclose(sp);
}

/* A dataset with an unlimited first dimension (and, if wide_unlimited, second). */
static void create_rows(nm_h5_try *t, hid_t loc, const char *name, hid_t type, int ndim, const hsize_t *tail,
                        int wide_unlimited) {
    hsize_t dims[3] = {0, 0, 0}, maxd[3] = {H5S_UNLIMITED, 0, 0}, chunk[3] = {ROWS_PER_CHUNK, 1, 1};
    for (int i = 1; i < ndim; i++) {
        dims[i] = tail[i - 1];
        maxd[i] = wide_unlimited ? H5S_UNLIMITED : tail[i - 1];
        chunk[i] = tail[i - 1] > 0 ? tail[i - 1] : 1;
    }
    if (ndim == 3) chunk[0] = 4; /* [rows, V, E] blocks are large */
    create_dataset(t, loc, name, type, ndim, dims, maxd, chunk);
}

/* One collective write of rank 0's selection (the other ranks select nothing);
 * closes the spaces and the dataset. */
static void write_collective(nm_h5_try *t, hid_t d, hid_t memtype, hid_t ms, hid_t fs, const void *data, int root) {
    if (!root) {
        NM_H5_TRY(t, H5Sselect_none(fs));
        NM_H5_TRY(t, H5Sselect_none(ms));
    }
    hid_t dxpl = NM_H5_TRY(t, H5Pcreate(H5P_DATASET_XFER));
    NM_H5_TRY(t, H5Pset_dxpl_mpio(dxpl, H5FD_MPIO_COLLECTIVE));
    NM_H5_TRY(t, H5Dwrite(d, memtype, ms, fs, dxpl, data));
    if (dxpl >= 0) H5Pclose(dxpl);
    if (ms >= 0) H5Sclose(ms);
    if (fs >= 0) H5Sclose(fs);
    if (d >= 0) H5Dclose(d);
}

/* Appends row number `row` (all ranks pass the same dims; rank 0's data is written). */
static void append_row(nm_h5_try *t, hid_t file, const char *name, hid_t memtype, long row, int ndim,
                       const hsize_t *tail, const void *data, int root) {
    hid_t d = NM_H5_TRY(t, H5Dopen2(file, name, H5P_DEFAULT));
    hsize_t cur[3] = {0, 0, 0}, want[3];
    hid_t fs = NM_H5_TRY(t, H5Dget_space(d));
    NM_H5_TRY(t, H5Sget_simple_extent_dims(fs, cur, NULL));
    if (fs >= 0) H5Sclose(fs);
    want[0] = (hsize_t)row + 1;
    for (int i = 1; i < ndim; i++) want[i] = tail[i - 1] > cur[i] ? tail[i - 1] : cur[i];
    NM_H5_TRY(t, H5Dset_extent(d, want));
    fs = NM_H5_TRY(t, H5Dget_space(d));
    hsize_t start[3] = {(hsize_t)row, 0, 0}, count[3] = {1, 1, 1};
    for (int i = 1; i < ndim; i++) count[i] = tail[i - 1];
    hid_t ms = NM_H5_TRY(t, H5Screate_simple(ndim, count, NULL));
    if (root) NM_H5_TRY(t, H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, count, NULL));
    write_collective(t, d, memtype, ms, fs, data, root);
}

/* Cuts a row dataset back to `rows` rows. */
static void truncate_rows(nm_h5_try *t, hid_t file, const char *name, long rows) {
    hid_t d = NM_H5_TRY(t, H5Dopen2(file, name, H5P_DEFAULT));
    hid_t fs = NM_H5_TRY(t, H5Dget_space(d));
    hsize_t dims[3] = {0, 0, 0};
    NM_H5_TRY(t, H5Sget_simple_extent_dims(fs, dims, NULL));
    if (fs >= 0) H5Sclose(fs);
    if (dims[0] > (hsize_t)rows) {
        dims[0] = (hsize_t)rows;
        NM_H5_TRY(t, H5Dset_extent(d, dims));
    }
    if (d >= 0) H5Dclose(d);
}

static void block_name(char *buf, size_t n, int l, const char *what) {
    snprintf(buf, n, "/routing/blocks/%d/%s", l, what);
}

/* The per-block row datasets: one row per stats interval. `tail` says what
 * follows the row dimension: nothing, E, P (grows with the rank count) or V x E. */
enum { TAIL_NONE, TAIL_E, TAIL_P, TAIL_VE };
static const struct {
    const char *name;
    int tail;
    int is_float; /* else integer of `bits` */
    int bits;
} BLOCK_ROWS[] = {
    {"tokens_per_expert", TAIL_E, 0, 64},     {"top1_per_expert", TAIL_E, 0, 64},
    {"dropped", TAIL_NONE, 0, 64},            {"aux_loss", TAIL_NONE, 1, 64},
    {"router_entropy", TAIL_NONE, 1, 64},     {"tokens_per_rank", TAIL_P, 0, 64},
    {"token_expert_interval", TAIL_VE, 0, 32},
};
#define NBLOCK_ROWS (int)(sizeof BLOCK_ROWS / sizeof BLOCK_ROWS[0])

static void create_file_layout(nm_h5_try *t, hid_t f, const nm_run_stats *rs, const nm_vocab *vocab,
                               int stats_interval, const char *run_id, int root) {
    nm_h5_attr_write_str(t, f, "format", NM_RUN_FORMAT);
    nm_h5_attr_write_i64(t, f, "format_version", NM_RUN_VERSION);
    if (run_id[0]) nm_h5_attr_write_str(t, f, "run_id", run_id);
    nm_h5_attr_write_i64(t, f, "n_layers", rs->L);
    nm_h5_attr_write_i64(t, f, "n_experts", rs->E);
    nm_h5_attr_write_i64(t, f, "vocab_size", rs->V);
    nm_h5_attr_write_i64(t, f, "stats_interval", stats_interval);
    hsize_t vd = (hsize_t)rs->V;
    hid_t vs = NM_H5_TRY(t, H5Screate_simple(1, &vd, NULL));
    hid_t d = NM_H5_TRY(t, H5Dcreate2(f, "vocab", H5T_STD_U8LE, vs, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
    write_collective(t, d, H5T_NATIVE_UCHAR, vs, NM_H5_TRY(t, H5Scopy(vs)), vocab->bytes, root);
    hsize_t none[2] = {0, 0}, E[1] = {(hsize_t)rs->E}, P[1] = {(hsize_t)rs->P}, VE[2] = {(hsize_t)rs->V, (hsize_t)rs->E};
    char nm[128];
    create_rows(t, f, "/metrics/step", H5T_STD_I64LE, 1, none, 0);
    for (int i = 0; i < NMETRICS; i++) {
        snprintf(nm, sizeof nm, "/metrics/%s", METRICS[i]);
        create_rows(t, f, nm, H5T_IEEE_F64LE, 1, none, 0);
    }
    create_rows(t, f, "/routing/step", H5T_STD_I64LE, 1, none, 0);
    for (int l = 0; l < rs->L; l++) {
        for (int i = 0; i < NBLOCK_ROWS; i++) {
            int tail = BLOCK_ROWS[i].tail;
            hid_t type = BLOCK_ROWS[i].is_float ? H5T_IEEE_F64LE
                         : BLOCK_ROWS[i].bits == 32 ? H5T_STD_I32LE
                                                    : H5T_STD_I64LE;
            const hsize_t *dims = tail == TAIL_E ? E : tail == TAIL_P ? P : tail == TAIL_VE ? VE : none;
            int ndim = tail == TAIL_NONE ? 1 : tail == TAIL_VE ? 3 : 2;
            block_name(nm, sizeof nm, l, BLOCK_ROWS[i].name);
            create_rows(t, f, nm, type, ndim, dims, tail == TAIL_P);
        }
        /* cumulative first choices per vocabulary id: rewritten at every row */
        block_name(nm, sizeof nm, l, "token_expert");
        create_dataset(t, f, nm, H5T_STD_I64LE, 2, VE, NULL, NULL);
    }
}

/* Reads a whole dataset into buf (all ranks). */
static int read_all(hid_t f, const char *name, hid_t memtype, void *buf) {
    hid_t d = H5Dopen2(f, name, H5P_DEFAULT);
    if (d < 0) return -1;
    herr_t r = H5Dread(d, memtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf);
    H5Dclose(d);
    return r < 0 ? -1 : 0;
}

static long dataset_rows(hid_t f, const char *name) {
    hid_t d = H5Dopen2(f, name, H5P_DEFAULT);
    if (d < 0) return -1;
    hid_t s = H5Dget_space(d);
    hsize_t dims[3] = {0};
    H5Sget_simple_extent_dims(s, dims, NULL);
    H5Sclose(s);
    H5Dclose(d);
    return (long)dims[0];
}

/* An existing run.h5 as one rank reads it (serial driver, read-only). */
typedef struct file_state {
    double L, E, V;
    long rows, keep; /* rows in the file; rows up to the step resumed from */
    char run_id[NM_RUN_ID_MAX];
} file_state;

static int read_state(const char *path, int64_t resume_step, file_state *st, nm_error *err) {
    memset(st, 0, sizeof *st);
    st->L = st->E = st->V = -1;
    hid_t f = nm_h5_open_read(path, "run statistics file", err);
    if (f < 0) return -1;
    nm_h5_attr_number(f, "n_layers", &st->L);
    nm_h5_attr_number(f, "n_experts", &st->E);
    nm_h5_attr_number(f, "vocab_size", &st->V);
    if (nm_h5_attr_string(f, "run_id", st->run_id, sizeof st->run_id) != 0) st->run_id[0] = '\0';
    st->rows = dataset_rows(f, "/routing/step");
    int64_t *steps = nm_malloc(sizeof(int64_t) * (size_t)(st->rows > 0 ? st->rows : 1));
    int rc = 0;
    if (st->rows < 0) rc = nm_fail(err, "run statistics file '%s' has no /routing/step (not a nanomoe run.h5?)", path);
    else if (st->rows > 0 && read_all(f, "/routing/step", H5T_NATIVE_INT64, steps) != 0)
        rc = nm_fail(err, "run statistics file '%s': cannot read /routing/step (truncated or corrupt?)", path);
    else
        while (st->keep < st->rows && steps[st->keep] <= resume_step) st->keep++;
    free(steps);
    H5Fclose(f);
    return rc;
}

/* Opens the existing file collectively and cuts it back to st->keep rows. */
static void reopen(nm_run_stats *rs, const char *path, const nm_model *m, const file_state *st,
                   const char *run_id) {
    nm_h5_try *t = &rs->h5;
    hid_t fapl = NM_H5_TRY(t, H5Pcreate(H5P_FILE_ACCESS));
    NM_H5_TRY(t, H5Pset_fapl_mpio(fapl, m->comm, MPI_INFO_NULL));
    hid_t f = NM_H5_TRY(t, H5Fopen(path, H5F_ACC_RDWR, fapl));
    if (fapl >= 0) H5Pclose(fapl);
    long keep = st->keep;
    char nm[128];
    truncate_rows(t, f, "/metrics/step", keep);
    for (int i = 0; i < NMETRICS; i++) {
        snprintf(nm, sizeof nm, "/metrics/%s", METRICS[i]);
        truncate_rows(t, f, nm, keep);
    }
    truncate_rows(t, f, "/routing/step", keep);
    size_t VE = (size_t)rs->V * rs->E;
    int32_t *rowbuf = nm_malloc(sizeof(int32_t) * VE * (size_t)(keep > 0 ? keep : 1));
    for (int l = 0; l < rs->L && !t->failed; l++) {
        for (int i = 0; i < NBLOCK_ROWS; i++) {
            block_name(nm, sizeof nm, l, BLOCK_ROWS[i].name);
            truncate_rows(t, f, nm, keep);
        }
        /* the cumulative counts are the sum of the rows that remain */
        int64_t *cum = rs->cumulative + (size_t)l * VE;
        memset(cum, 0, sizeof(int64_t) * VE);
        block_name(nm, sizeof nm, l, "token_expert_interval");
        if (keep > 0 && read_all(f, nm, H5T_NATIVE_INT32, rowbuf) == 0)
            for (long r = 0; r < keep; r++)
                for (size_t i = 0; i < VE; i++) cum[i] += rowbuf[(size_t)r * VE + i];
    }
    free(rowbuf);
    if (run_id[0]) nm_h5_attr_write_str(t, f, "run_id", run_id); /* a run continued from a file without one */
    rs->rows = keep;
    rs->file = f;
}

/* Creates a new file collectively; every rank must see a writable directory first. */
static int create(nm_run_stats *rs, const char *path, const nm_model *m, const nm_vocab *vocab, int stats_interval,
                  const char *run_id, nm_error *err) {
    char dir[NM_PATH_MAX + 16];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash) *slash = '\0';
    else snprintf(dir, sizeof dir, ".");
    int ok = access(dir, W_OK | X_OK) == 0;
    if (!ok) nm_fail(err, "cannot create '%s': directory '%s' is not writable here", path, dir);
    if (!nm_agree(m->comm, ok, err)) return -1;
    nm_h5_try *t = &rs->h5;
    hid_t fapl = NM_H5_TRY(t, H5Pcreate(H5P_FILE_ACCESS));
    NM_H5_TRY(t, H5Pset_fapl_mpio(fapl, m->comm, MPI_INFO_NULL));
    hid_t f = NM_H5_TRY(t, H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, fapl));
    if (fapl >= 0) H5Pclose(fapl);
    create_file_layout(t, f, rs, vocab, stats_interval, run_id, m->rank == 0);
    NM_H5_TRY(t, H5Fflush(f, H5F_SCOPE_GLOBAL));
    rs->file = f;
    return 0;
}

static void reset_interval(nm_run_stats *rs) {
    size_t LE = (size_t)rs->L * rs->E;
    rs->steps = 0;
    rs->loss = rs->ce = rs->aux = rs->tokens = 0.0;
    rs->val_loss = NAN;
    memset(rs->count, 0, sizeof(double) * LE);
    memset(rs->top1, 0, sizeof(double) * LE);
    memset(rs->dropped, 0, sizeof(double) * (size_t)rs->L);
    memset(rs->aux_layer, 0, sizeof(double) * (size_t)rs->L);
    memset(rs->entropy, 0, sizeof(double) * (size_t)rs->L);
    memset(rs->rows_in, 0, sizeof(double) * (size_t)rs->L);
    memset(rs->token_expert, 0, sizeof(int32_t) * LE * (size_t)rs->V);
}

int nm_run_stats_open(nm_run_stats *rs, const char *path, const nm_model *m, const nm_vocab *vocab,
                      int stats_interval, int64_t resume_step, const char *run_id, const char *accept_id,
                      nm_error *err) {
    memset(rs, 0, sizeof *rs);
    nm_h5_quiet();
    rs->h5.nranks = m->nranks;
    rs->L = m->cfg.n_layers;
    rs->E = m->cfg.n_experts;
    rs->V = m->cfg.vocab_size;
    rs->P = m->nranks;
    size_t LE = (size_t)rs->L * rs->E;
    rs->count = nm_calloc(LE, sizeof(double));
    rs->top1 = nm_calloc(LE, sizeof(double));
    rs->dropped = nm_calloc((size_t)rs->L, sizeof(double));
    rs->aux_layer = nm_calloc((size_t)rs->L, sizeof(double));
    rs->entropy = nm_calloc((size_t)rs->L, sizeof(double));
    rs->rows_in = nm_calloc((size_t)rs->L, sizeof(double));
    rs->token_expert = nm_calloc(LE * (size_t)rs->V, sizeof(int32_t));
    rs->cumulative = nm_calloc(LE * (size_t)rs->V, sizeof(int64_t));
    rs->sum_count = nm_calloc(LE, sizeof(double));
    rs->sum_dropped = nm_calloc((size_t)rs->L, sizeof(double));
    reset_interval(rs);
    rs->file = -1;
    /* rank 0 decides whether there is a file to continue */
    int exists = resume_step >= 0 && m->rank == 0 && access(path, F_OK) == 0;
    NM_MPI_CHECK(MPI_Bcast(&exists, 1, MPI_INT, 0, m->comm));
    if (exists) {
        /* every rank reads its state on its own: it must be rank 0's */
        file_state st;
        int ok = read_state(path, resume_step, &st, err) == 0;
        char state[512];
        /* the run first: another run's file is the likeliest difference */
        snprintf(state, sizeof state, "run_id=%s\nn_layers=%g\nn_experts=%g\nvocab_size=%g\nrows=%ld\n", st.run_id,
                 st.L, st.E, st.V, st.rows);
        char what[NM_PATH_MAX + 32];
        snprintf(what, sizeof what, "'%s' as read here", path);
        if (!nm_agree_same(m->comm, ok, what, state, err)) {
            nm_run_stats_close(rs);
            return -1;
        }
        const char *why = st.L != rs->L || st.E != rs->E || st.V != rs->V ? "does not match this model"
                          : strcmp(st.run_id, accept_id) != 0            ? "belongs to another run"
                                                                         : NULL;
        if (why) { /* an upcycled model, or another run's file: keep it under another name */
            char aside[NM_PATH_MAX + 32];
            snprintf(aside, sizeof aside, "%s.before-step-%lld", path, (long long)resume_step);
            ok = 1;
            if (m->rank == 0) {
                if (rename(path, aside) == 0) nm_warn0("%s %s; kept as %s", path, why, aside);
                else ok = nm_fail(err, "%s %s, and it cannot be moved aside to %s: %s", path, why, aside, strerror(errno)) == 0;
            }
            if (!nm_agree(m->comm, ok, err)) {
                nm_run_stats_close(rs);
                return -1;
            }
            exists = 0;
        } else {
            reopen(rs, path, m, &st, run_id);
        }
    }
    if (!exists && create(rs, path, m, vocab, stats_interval, run_id, err) != 0) {
        nm_run_stats_close(rs);
        return -1;
    }
    if (rs->h5.failed) {
        nm_fail(err, "cannot write '%s': %s", path, rs->h5.msg);
        nm_run_stats_close(rs);
        return -1;
    }
    return 0;
}

int nm_run_stats_close(nm_run_stats *rs) {
    int failed = rs->h5.failed;
    if (rs->file >= 0) {
        if (failed) H5Fclose(rs->file);
        else failed = NM_H5_TRY(&rs->h5, H5Fclose(rs->file)) < 0;
    }
    free(rs->count);
    free(rs->top1);
    free(rs->dropped);
    free(rs->aux_layer);
    free(rs->entropy);
    free(rs->rows_in);
    free(rs->token_expert);
    free(rs->cumulative);
    free(rs->sum_count);
    free(rs->sum_dropped);
    memset(rs, 0, sizeof *rs);
    rs->file = -1;
    return failed ? -1 : 0;
}

void nm_run_stats_step(nm_run_stats *rs, const nm_model *m, const int32_t *x) {
    int L = rs->L, E = rs->E, V = rs->V, K = m->cfg.top_k;
    const double *st = m->stats;
    rs->steps++;
    rs->loss += m->loss;
    rs->ce += m->ce;
    rs->aux += m->aux;
    rs->tokens += (double)m->fwd.b_global * m->T;
    long N = (long)m->B * m->T;
    for (int l = 0; l < L; l++) {
        const double *sl = st + NM_STAT_LAYER(l, E);
        for (int e = 0; e < E; e++) {
            rs->count[(size_t)l * E + e] += sl[NM_STAT_COUNT(E) + e];
            rs->top1[(size_t)l * E + e] += sl[NM_STAT_TOP1(E) + e];
            rs->sum_count[(size_t)l * E + e] += sl[NM_STAT_COUNT(E) + e];
        }
        rs->dropped[l] += sl[NM_STAT_DROPPED(E)];
        rs->sum_dropped[l] += sl[NM_STAT_DROPPED(E)];
        rs->entropy[l] += sl[NM_STAT_ENTROPY(E)];
        rs->aux_layer[l] += m->aux_layer[l];
        const nm_moe_acts *ma = &m->acts.layers[l].moe;
        rs->rows_in[l] += ma->plan.rows_in;
        int32_t *te = rs->token_expert + (size_t)l * V * E;
        for (long n = 0; n < N; n++) te[(size_t)x[n] * E + ma->topi[n * K]]++;
    }
}

void nm_run_stats_eval(nm_run_stats *rs, double val_loss) { rs->val_loss = val_loss; }

int nm_run_stats_write(nm_run_stats *rs, const nm_model *m, int64_t step, double lr, double tokens_per_s, nm_error *err) {
    nm_h5_try *t = &rs->h5;
    int L = rs->L, E = rs->E, V = rs->V, P = m->nranks, root = m->rank == 0;
    hid_t f = rs->file;
    double n = rs->steps > 0 ? rs->steps : 1;
    double metrics[NMETRICS] = {rs->loss / n, rs->ce / n, rs->aux / n, lr, tokens_per_s, rs->val_loss};
    hsize_t none[1] = {0}, tE[1] = {(hsize_t)E}, tP[1] = {(hsize_t)P}, tVE[2] = {(hsize_t)V, (hsize_t)E};
    char nm[128];
    append_row(t, f, "/metrics/step", H5T_NATIVE_INT64, rs->rows, 1, none, &step, root);
    for (int i = 0; i < NMETRICS; i++) {
        snprintf(nm, sizeof nm, "/metrics/%s", METRICS[i]);
        append_row(t, f, nm, H5T_NATIVE_DOUBLE, rs->rows, 1, none, &metrics[i], root);
    }
    append_row(t, f, "/routing/step", H5T_NATIVE_INT64, rs->rows, 1, none, &step, root);
    size_t VE = (size_t)V * E;
    int64_t *ibuf = nm_malloc(sizeof(int64_t) * (E > P ? E : P));
    double *rows_in = nm_malloc(sizeof(double) * (size_t)P);
    int32_t *te = nm_malloc(sizeof(int32_t) * VE);
    for (int l = 0; l < L; l++) {
        for (int e = 0; e < E; e++) ibuf[e] = (int64_t)rs->count[(size_t)l * E + e];
        block_name(nm, sizeof nm, l, "tokens_per_expert");
        append_row(t, f, nm, H5T_NATIVE_INT64, rs->rows, 2, tE, ibuf, root);
        for (int e = 0; e < E; e++) ibuf[e] = (int64_t)rs->top1[(size_t)l * E + e];
        block_name(nm, sizeof nm, l, "top1_per_expert");
        append_row(t, f, nm, H5T_NATIVE_INT64, rs->rows, 2, tE, ibuf, root);
        int64_t dropped = (int64_t)rs->dropped[l];
        block_name(nm, sizeof nm, l, "dropped");
        append_row(t, f, nm, H5T_NATIVE_INT64, rs->rows, 1, none, &dropped, root);
        double aux = rs->aux_layer[l] / n, ent = rs->tokens > 0 ? rs->entropy[l] / rs->tokens : NAN;
        block_name(nm, sizeof nm, l, "aux_loss");
        append_row(t, f, nm, H5T_NATIVE_DOUBLE, rs->rows, 1, none, &aux, root);
        block_name(nm, sizeof nm, l, "router_entropy");
        append_row(t, f, nm, H5T_NATIVE_DOUBLE, rs->rows, 1, none, &ent, root);
        /* per-rank rows received: gathered, in rank order */
        NM_MPI_CHECK(MPI_Gather(&rs->rows_in[l], 1, MPI_DOUBLE, rows_in, 1, MPI_DOUBLE, 0, m->comm));
        for (int r = 0; r < P; r++) ibuf[r] = (int64_t)rows_in[r];
        block_name(nm, sizeof nm, l, "tokens_per_rank");
        append_row(t, f, nm, H5T_NATIVE_INT64, rs->rows, 2, tP, ibuf, root);
        /* first choices per vocabulary id: integer sums, exact in any order */
        NM_MPI_CHECK(MPI_Reduce(rs->token_expert + (size_t)l * VE, te, (int)VE, MPI_INT32_T, MPI_SUM, 0, m->comm));
        block_name(nm, sizeof nm, l, "token_expert_interval");
        append_row(t, f, nm, H5T_NATIVE_INT32, rs->rows, 3, tVE, te, root);
        int64_t *cum = rs->cumulative + (size_t)l * VE;
        if (root)
            for (size_t i = 0; i < VE; i++) cum[i] += te[i];
        block_name(nm, sizeof nm, l, "token_expert");
        hid_t d = NM_H5_TRY(t, H5Dopen2(f, nm, H5P_DEFAULT));
        write_collective(t, d, H5T_NATIVE_INT64, NM_H5_TRY(t, H5Screate_simple(2, tVE, NULL)),
                         NM_H5_TRY(t, H5Dget_space(d)), cum, root);
    }
    free(ibuf);
    free(rows_in);
    free(te);
    /* a crash loses at most the interval being accumulated */
    NM_H5_TRY(t, H5Fflush(f, H5F_SCOPE_GLOBAL));
    rs->rows++;
    reset_interval(rs);
    return t->failed ? nm_fail(err, "cannot write run.h5: %s", t->msg) : 0;
}

void nm_run_stats_summary(nm_run_stats *rs, char *buf, size_t n) {
    int L = rs->L, E = rs->E;
    size_t o = 0;
    for (int l = 0; l < L && o < n; l++) {
        const double *c = rs->sum_count + (size_t)l * E;
        double mx = 0, mn = INFINITY;
        int dead = 0;
        for (int e = 0; e < E; e++) {
            mx = c[e] > mx ? c[e] : mx;
            mn = c[e] < mn ? c[e] : mn;
            dead += c[e] == 0;
        }
        char ratio[32];
        if (mn > 0) snprintf(ratio, sizeof ratio, "%.2f", mx / mn);
        else snprintf(ratio, sizeof ratio, "inf");
        o += (size_t)snprintf(buf + o, n - o, "%sL%d load max/min %s dead %d dropped %.0f", l ? " | " : "", l, ratio, dead,
                              rs->sum_dropped[l]);
    }
    memset(rs->sum_count, 0, sizeof(double) * (size_t)L * E);
    memset(rs->sum_dropped, 0, sizeof(double) * (size_t)L);
}
