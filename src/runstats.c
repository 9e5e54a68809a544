/* Per-run metrics and routing statistics in run.h5 (parallel HDF5). Every
 * rank makes the same collective calls; rank 0 writes each row's values, the
 * others select nothing. */
#include "nanomoe/runstats.h"

#include <hdf5.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ROWS_PER_CHUNK 64

static const char *METRICS[] = {"loss", "ce", "aux", "lr", "tokens_per_s", "val_loss"};
#define NMETRICS 6

/* A dataset with an unlimited first dimension (and, if wide_unlimited, second). */
static void create_rows(hid_t loc, const char *name, hid_t type, int ndim, const hsize_t *tail, int wide_unlimited) {
    hsize_t dims[3] = {0, 0, 0}, maxd[3] = {H5S_UNLIMITED, 0, 0}, chunk[3] = {ROWS_PER_CHUNK, 1, 1};
    for (int i = 1; i < ndim; i++) {
        dims[i] = tail[i - 1];
        maxd[i] = wide_unlimited ? H5S_UNLIMITED : tail[i - 1];
        chunk[i] = tail[i - 1] > 0 ? tail[i - 1] : 1;
    }
    if (ndim == 3) chunk[0] = 4; /* [rows, V, E] blocks are large */
    hid_t sp = NM_H5_CHECK(H5Screate_simple(ndim, dims, maxd));
    hid_t dcpl = NM_H5_CHECK(H5Pcreate(H5P_DATASET_CREATE));
    NM_H5_CHECK(H5Pset_chunk(dcpl, ndim, chunk));
    hid_t lcpl = NM_H5_CHECK(H5Pcreate(H5P_LINK_CREATE));
    NM_H5_CHECK(H5Pset_create_intermediate_group(lcpl, 1));
    hid_t d = NM_H5_CHECK(H5Dcreate2(loc, name, type, sp, lcpl, dcpl, H5P_DEFAULT));
    NM_H5_CHECK(H5Dclose(d));
    NM_H5_CHECK(H5Pclose(lcpl));
    NM_H5_CHECK(H5Pclose(dcpl));
    NM_H5_CHECK(H5Sclose(sp));
}

/* One collective write of rank 0's selection (the other ranks select nothing);
 * closes the spaces and the dataset. */
static void write_collective(hid_t d, hid_t memtype, hid_t ms, hid_t fs, const void *data, int root) {
    if (!root) {
        NM_H5_CHECK(H5Sselect_none(fs));
        NM_H5_CHECK(H5Sselect_none(ms));
    }
    hid_t dxpl = NM_H5_CHECK(H5Pcreate(H5P_DATASET_XFER));
    NM_H5_CHECK(H5Pset_dxpl_mpio(dxpl, H5FD_MPIO_COLLECTIVE));
    NM_H5_CHECK(H5Dwrite(d, memtype, ms, fs, dxpl, data));
    NM_H5_CHECK(H5Pclose(dxpl));
    NM_H5_CHECK(H5Sclose(ms));
    NM_H5_CHECK(H5Sclose(fs));
    NM_H5_CHECK(H5Dclose(d));
}

/* Appends row number `row` (all ranks pass the same dims; rank 0's data is written). */
static void append_row(hid_t file, const char *name, hid_t memtype, long row, int ndim, const hsize_t *tail,
                       const void *data, int root) {
    hid_t d = NM_H5_CHECK(H5Dopen2(file, name, H5P_DEFAULT));
    hsize_t cur[3], want[3];
    hid_t fs = NM_H5_CHECK(H5Dget_space(d));
    NM_H5_CHECK(H5Sget_simple_extent_dims(fs, cur, NULL));
    NM_H5_CHECK(H5Sclose(fs));
    want[0] = (hsize_t)row + 1;
    for (int i = 1; i < ndim; i++) want[i] = tail[i - 1] > cur[i] ? tail[i - 1] : cur[i];
    NM_H5_CHECK(H5Dset_extent(d, want));
    fs = NM_H5_CHECK(H5Dget_space(d));
    hsize_t start[3] = {(hsize_t)row, 0, 0}, count[3] = {1, 1, 1};
    for (int i = 1; i < ndim; i++) count[i] = tail[i - 1];
    hid_t ms = NM_H5_CHECK(H5Screate_simple(ndim, count, NULL));
    if (root) NM_H5_CHECK(H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, count, NULL));
    write_collective(d, memtype, ms, fs, data, root);
}

/* Cuts a row dataset back to `rows` rows. */
static void truncate_rows(hid_t file, const char *name, long rows) {
    hid_t d = NM_H5_CHECK(H5Dopen2(file, name, H5P_DEFAULT));
    hid_t fs = NM_H5_CHECK(H5Dget_space(d));
    hsize_t dims[3];
    NM_H5_CHECK(H5Sget_simple_extent_dims(fs, dims, NULL));
    NM_H5_CHECK(H5Sclose(fs));
    if (dims[0] > (hsize_t)rows) {
        dims[0] = (hsize_t)rows;
        NM_H5_CHECK(H5Dset_extent(d, dims));
    }
    NM_H5_CHECK(H5Dclose(d));
}

static void attr_i64(hid_t obj, const char *name, int64_t v) {
    if (H5Aexists(obj, name) > 0) NM_H5_CHECK(H5Adelete(obj, name));
    hid_t sp = NM_H5_CHECK(H5Screate(H5S_SCALAR));
    hid_t a = NM_H5_CHECK(H5Acreate2(obj, name, H5T_STD_I64LE, sp, H5P_DEFAULT, H5P_DEFAULT));
    NM_H5_CHECK(H5Awrite(a, H5T_NATIVE_INT64, &v));
    NM_H5_CHECK(H5Aclose(a));
    NM_H5_CHECK(H5Sclose(sp));
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

static void create_file_layout(hid_t f, const nm_run_stats *rs, const nm_vocab *vocab, int stats_interval) {
    hid_t t = NM_H5_CHECK(H5Tcopy(H5T_C_S1));
    NM_H5_CHECK(H5Tset_size(t, H5T_VARIABLE));
    NM_H5_CHECK(H5Tset_cset(t, H5T_CSET_UTF8));
    hid_t sp = NM_H5_CHECK(H5Screate(H5S_SCALAR));
    hid_t a = NM_H5_CHECK(H5Acreate2(f, "format", t, sp, H5P_DEFAULT, H5P_DEFAULT));
    const char *fmt = NM_RUN_FORMAT;
    NM_H5_CHECK(H5Awrite(a, t, &fmt));
    NM_H5_CHECK(H5Aclose(a));
    NM_H5_CHECK(H5Sclose(sp));
    NM_H5_CHECK(H5Tclose(t));
    attr_i64(f, "format_version", NM_RUN_VERSION);
    attr_i64(f, "n_layers", rs->L);
    attr_i64(f, "n_experts", rs->E);
    attr_i64(f, "vocab_size", rs->V);
    attr_i64(f, "stats_interval", stats_interval);
    hsize_t vd = (hsize_t)rs->V;
    hid_t vs = NM_H5_CHECK(H5Screate_simple(1, &vd, NULL));
    hid_t d = NM_H5_CHECK(H5Dcreate2(f, "vocab", H5T_STD_U8LE, vs, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
    hid_t dxpl = NM_H5_CHECK(H5Pcreate(H5P_DATASET_XFER));
    NM_H5_CHECK(H5Pset_dxpl_mpio(dxpl, H5FD_MPIO_COLLECTIVE));
    int rank;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    if (rank != 0) NM_H5_CHECK(H5Sselect_none(vs));
    NM_H5_CHECK(H5Dwrite(d, H5T_NATIVE_UCHAR, vs, vs, dxpl, vocab->bytes));
    NM_H5_CHECK(H5Pclose(dxpl));
    NM_H5_CHECK(H5Dclose(d));
    NM_H5_CHECK(H5Sclose(vs));
    hsize_t none[2] = {0, 0}, E[1] = {(hsize_t)rs->E}, P[1] = {(hsize_t)rs->P}, VE[2] = {(hsize_t)rs->V, (hsize_t)rs->E};
    char nm[128];
    create_rows(f, "/metrics/step", H5T_STD_I64LE, 1, none, 0);
    for (int i = 0; i < NMETRICS; i++) {
        snprintf(nm, sizeof nm, "/metrics/%s", METRICS[i]);
        create_rows(f, nm, H5T_IEEE_F64LE, 1, none, 0);
    }
    create_rows(f, "/routing/step", H5T_STD_I64LE, 1, none, 0);
    for (int l = 0; l < rs->L; l++) {
        for (int i = 0; i < NBLOCK_ROWS; i++) {
            int tail = BLOCK_ROWS[i].tail;
            hid_t type = BLOCK_ROWS[i].is_float ? H5T_IEEE_F64LE
                         : BLOCK_ROWS[i].bits == 32 ? H5T_STD_I32LE
                                                    : H5T_STD_I64LE;
            const hsize_t *dims = tail == TAIL_E ? E : tail == TAIL_P ? P : tail == TAIL_VE ? VE : none;
            int ndim = tail == TAIL_NONE ? 1 : tail == TAIL_VE ? 3 : 2;
            block_name(nm, sizeof nm, l, BLOCK_ROWS[i].name);
            create_rows(f, nm, type, ndim, dims, tail == TAIL_P);
        }
        /* cumulative first choices per vocabulary id: rewritten at every row */
        block_name(nm, sizeof nm, l, "token_expert");
        hid_t s2 = NM_H5_CHECK(H5Screate_simple(2, VE, NULL));
        hid_t lcpl = NM_H5_CHECK(H5Pcreate(H5P_LINK_CREATE));
        NM_H5_CHECK(H5Pset_create_intermediate_group(lcpl, 1));
        hid_t dd = NM_H5_CHECK(H5Dcreate2(f, nm, H5T_STD_I64LE, s2, lcpl, H5P_DEFAULT, H5P_DEFAULT));
        NM_H5_CHECK(H5Dclose(dd));
        NM_H5_CHECK(H5Pclose(lcpl));
        NM_H5_CHECK(H5Sclose(s2));
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

/* Opens an existing run.h5 to continue at resume_step: -1 if it does not fit
 * this model (then the caller moves it aside). */
static int reopen(nm_run_stats *rs, const char *path, const nm_model *m, int64_t resume_step) {
    hid_t fapl = NM_H5_CHECK(H5Pcreate(H5P_FILE_ACCESS));
    NM_H5_CHECK(H5Pset_fapl_mpio(fapl, m->comm, MPI_INFO_NULL));
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, fapl);
    NM_H5_CHECK(H5Pclose(fapl));
    if (f < 0) return -1;
    int64_t L = -1, E = -1, V = -1;
    hid_t a;
    if ((a = H5Aopen(f, "n_layers", H5P_DEFAULT)) >= 0) H5Aread(a, H5T_NATIVE_INT64, &L), H5Aclose(a);
    if ((a = H5Aopen(f, "n_experts", H5P_DEFAULT)) >= 0) H5Aread(a, H5T_NATIVE_INT64, &E), H5Aclose(a);
    if ((a = H5Aopen(f, "vocab_size", H5P_DEFAULT)) >= 0) H5Aread(a, H5T_NATIVE_INT64, &V), H5Aclose(a);
    long n = dataset_rows(f, "/routing/step");
    if (L != rs->L || E != rs->E || V != rs->V || n < 0) {
        H5Fclose(f);
        return -1;
    }
    int64_t *steps = nm_malloc(sizeof(int64_t) * (size_t)(n > 0 ? n : 1));
    long keep = 0;
    if (n > 0 && read_all(f, "/routing/step", H5T_NATIVE_INT64, steps) == 0)
        while (keep < n && steps[keep] <= resume_step) keep++;
    free(steps);
    char nm[128];
    truncate_rows(f, "/metrics/step", keep);
    for (int i = 0; i < NMETRICS; i++) {
        snprintf(nm, sizeof nm, "/metrics/%s", METRICS[i]);
        truncate_rows(f, nm, keep);
    }
    truncate_rows(f, "/routing/step", keep);
    size_t VE = (size_t)rs->V * rs->E;
    int32_t *rowbuf = nm_malloc(sizeof(int32_t) * VE * (size_t)(keep > 0 ? keep : 1));
    for (int l = 0; l < rs->L; l++) {
        for (int i = 0; i < NBLOCK_ROWS; i++) {
            block_name(nm, sizeof nm, l, BLOCK_ROWS[i].name);
            truncate_rows(f, nm, keep);
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
    rs->rows = keep;
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
                      int stats_interval, int64_t resume_step, nm_error *err) {
    memset(rs, 0, sizeof *rs);
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
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
    FILE *probe = resume_step >= 0 ? fopen(path, "rb") : NULL;
    int exists = probe != NULL;
    if (probe) fclose(probe);
    int ok = 1;
    NM_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &exists, 1, MPI_INT, MPI_MIN, m->comm));
    if (exists && reopen(rs, path, m, resume_step) != 0) {
        /* a run.h5 of another shape (an upcycled model, say): keep it under another name */
        char aside[NM_PATH_MAX + 32];
        snprintf(aside, sizeof aside, "%s.before-step-%lld", path, (long long)resume_step);
        if (m->rank == 0) {
            if (rename(path, aside) == 0) nm_warn0("%s does not match this model; kept as %s", path, aside);
            else ok = 0;
        }
        NM_MPI_CHECK(MPI_Bcast(&ok, 1, MPI_INT, 0, m->comm));
        if (!ok) return nm_fail(err, "cannot move the mismatched %s aside", path);
        exists = 0;
    }
    if (!exists) {
        hid_t fapl = NM_H5_CHECK(H5Pcreate(H5P_FILE_ACCESS));
        NM_H5_CHECK(H5Pset_fapl_mpio(fapl, m->comm, MPI_INFO_NULL));
        hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
        NM_H5_CHECK(H5Pclose(fapl));
        int created = f >= 0;
        NM_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &created, 1, MPI_INT, MPI_LAND, m->comm));
        if (!created) {
            if (f >= 0) H5Fclose(f);
            return nm_fail(err, "cannot create %s", path);
        }
        create_file_layout(f, rs, vocab, stats_interval);
        NM_H5_CHECK(H5Fflush(f, H5F_SCOPE_GLOBAL));
        rs->file = f;
    }
    return 0;
}

void nm_run_stats_close(nm_run_stats *rs) {
    if (rs->file >= 0) NM_H5_CHECK(H5Fclose(rs->file));
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

void nm_run_stats_write(nm_run_stats *rs, const nm_model *m, int64_t step, double lr, double tokens_per_s) {
    int L = rs->L, E = rs->E, V = rs->V, P = m->nranks, root = m->rank == 0;
    hid_t f = rs->file;
    double n = rs->steps > 0 ? rs->steps : 1;
    double metrics[NMETRICS] = {rs->loss / n, rs->ce / n, rs->aux / n, lr, tokens_per_s, rs->val_loss};
    hsize_t none[1] = {0}, tE[1] = {(hsize_t)E}, tP[1] = {(hsize_t)P}, tVE[2] = {(hsize_t)V, (hsize_t)E};
    char nm[128];
    append_row(f, "/metrics/step", H5T_NATIVE_INT64, rs->rows, 1, none, &step, root);
    for (int i = 0; i < NMETRICS; i++) {
        snprintf(nm, sizeof nm, "/metrics/%s", METRICS[i]);
        append_row(f, nm, H5T_NATIVE_DOUBLE, rs->rows, 1, none, &metrics[i], root);
    }
    append_row(f, "/routing/step", H5T_NATIVE_INT64, rs->rows, 1, none, &step, root);
    size_t VE = (size_t)V * E;
    int64_t *ibuf = nm_malloc(sizeof(int64_t) * (E > P ? E : P));
    double *rows_in = nm_malloc(sizeof(double) * (size_t)P);
    int32_t *te = nm_malloc(sizeof(int32_t) * VE);
    for (int l = 0; l < L; l++) {
        for (int e = 0; e < E; e++) ibuf[e] = (int64_t)rs->count[(size_t)l * E + e];
        block_name(nm, sizeof nm, l, "tokens_per_expert");
        append_row(f, nm, H5T_NATIVE_INT64, rs->rows, 2, tE, ibuf, root);
        for (int e = 0; e < E; e++) ibuf[e] = (int64_t)rs->top1[(size_t)l * E + e];
        block_name(nm, sizeof nm, l, "top1_per_expert");
        append_row(f, nm, H5T_NATIVE_INT64, rs->rows, 2, tE, ibuf, root);
        int64_t dropped = (int64_t)rs->dropped[l];
        block_name(nm, sizeof nm, l, "dropped");
        append_row(f, nm, H5T_NATIVE_INT64, rs->rows, 1, none, &dropped, root);
        double aux = rs->aux_layer[l] / n, ent = rs->tokens > 0 ? rs->entropy[l] / rs->tokens : NAN;
        block_name(nm, sizeof nm, l, "aux_loss");
        append_row(f, nm, H5T_NATIVE_DOUBLE, rs->rows, 1, none, &aux, root);
        block_name(nm, sizeof nm, l, "router_entropy");
        append_row(f, nm, H5T_NATIVE_DOUBLE, rs->rows, 1, none, &ent, root);
        /* per-rank rows received: gathered, in rank order */
        NM_MPI_CHECK(MPI_Gather(&rs->rows_in[l], 1, MPI_DOUBLE, rows_in, 1, MPI_DOUBLE, 0, m->comm));
        for (int r = 0; r < P; r++) ibuf[r] = (int64_t)rows_in[r];
        block_name(nm, sizeof nm, l, "tokens_per_rank");
        append_row(f, nm, H5T_NATIVE_INT64, rs->rows, 2, tP, ibuf, root);
        /* first choices per vocabulary id: integer sums, exact in any order */
        NM_MPI_CHECK(MPI_Reduce(rs->token_expert + (size_t)l * VE, te, (int)VE, MPI_INT32_T, MPI_SUM, 0, m->comm));
        block_name(nm, sizeof nm, l, "token_expert_interval");
        append_row(f, nm, H5T_NATIVE_INT32, rs->rows, 3, tVE, te, root);
        int64_t *cum = rs->cumulative + (size_t)l * VE;
        if (root)
            for (size_t i = 0; i < VE; i++) cum[i] += te[i];
        block_name(nm, sizeof nm, l, "token_expert");
        hid_t d = NM_H5_CHECK(H5Dopen2(f, nm, H5P_DEFAULT));
        write_collective(d, H5T_NATIVE_INT64, NM_H5_CHECK(H5Screate_simple(2, tVE, NULL)),
                         NM_H5_CHECK(H5Dget_space(d)), cum, root);
    }
    free(ibuf);
    free(rows_in);
    free(te);
    /* a crash loses at most the interval being accumulated */
    NM_H5_CHECK(H5Fflush(f, H5F_SCOPE_GLOBAL));
    rs->rows++;
    reset_interval(rs);
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
