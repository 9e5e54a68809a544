/* Schema-v1 checkpoints. Written with parallel HDF5: every rank makes the
 * same collective calls; dense tensors are written by rank 0, expert tensors
 * by the rank that owns each expert hyperslab. Read by every rank on its own
 * (serial driver, no collective HDF5 call), then the outcome and what was
 * read are agreed with rank 0, so a file that one node sees differently is
 * an error naming that node instead of a hang or a silent divergence. */
#include "nanomoe/ckpt.h"

#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <libgen.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "nanomoe/agree.h"
#include "nanomoe/h5util.h"

/* ---------- writing ---------- */

/* Writes one tensor of a block: dense by rank 0 only, experts by their owner. */
static void write_tensor(nm_h5_try *t, hid_t file, hid_t lcpl, hid_t dxpl, const char *path, const nm_param_info *p,
                         const float *data, const nm_model *m) {
    hsize_t dims[3] = {(hsize_t)p->shape[0], (hsize_t)p->shape[1], (hsize_t)p->shape[2]};
    hsize_t count[3] = {dims[0], dims[1], dims[2]}, start[3] = {0, 0, 0};
    int writes;
    if (p->block == NM_BLOCK_EXPERT) {
        start[0] = (hsize_t)m->layout.expert_begin;
        count[0] = (hsize_t)m->layout.expert_count;
        writes = m->layout.expert_writer && m->layout.expert_count > 0;
    } else {
        writes = m->rank == 0;
    }
    hid_t fs = NM_H5_TRY(t, H5Screate_simple(p->ndim, dims, NULL));
    hid_t ds = NM_H5_TRY(t, H5Dcreate2(file, path, H5T_IEEE_F32LE, fs, lcpl, H5P_DEFAULT, H5P_DEFAULT));
    hid_t ms = NM_H5_TRY(t, H5Screate_simple(p->ndim, count, NULL));
    if (writes) {
        NM_H5_TRY(t, H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, count, NULL));
    } else {
        NM_H5_TRY(t, H5Sselect_none(fs));
        NM_H5_TRY(t, H5Sselect_none(ms));
    }
    NM_H5_TRY(t, H5Dwrite(ds, H5T_NATIVE_FLOAT, ms, fs, dxpl, data));
    if (ms >= 0) H5Sclose(ms);
    if (ds >= 0) H5Dclose(ds);
    if (fs >= 0) H5Sclose(fs);
}

static void write_tree(nm_h5_try *t, hid_t file, hid_t lcpl, hid_t dxpl, const char *group, const nm_model *m,
                       float *const blocks[2]) {
    char path[256];
    for (int i = 0; i < m->layout.n && !t->failed; i++) {
        const nm_param_info *p = &m->layout.info[i];
        snprintf(path, sizeof path, "%s/%s", group, p->name);
        write_tensor(t, file, lcpl, dxpl, path, p, blocks[p->block] + p->offset, m);
    }
}

/* Everything but the rename: the whole file written as tmp. */
static void write_file(nm_h5_try *t, const char *tmp, const nm_model *m, const nm_adamw *opt, const nm_vocab *vocab,
                       int64_t step, int64_t tokens_seen, const char *run_id) {
    hid_t fapl = NM_H5_TRY(t, H5Pcreate(H5P_FILE_ACCESS));
    NM_H5_TRY(t, H5Pset_fapl_mpio(fapl, m->comm, MPI_INFO_NULL));
    hid_t file = NM_H5_TRY(t, H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, fapl));
    hid_t lcpl = NM_H5_TRY(t, H5Pcreate(H5P_LINK_CREATE));
    NM_H5_TRY(t, H5Pset_create_intermediate_group(lcpl, 1));
    hid_t dxpl = NM_H5_TRY(t, H5Pcreate(H5P_DATASET_XFER));
    NM_H5_TRY(t, H5Pset_dxpl_mpio(dxpl, H5FD_MPIO_COLLECTIVE));

    nm_h5_attr_write_str(t, file, "format", NM_CKPT_FORMAT);
    nm_h5_attr_write_i64(t, file, "format_version", NM_CKPT_VERSION);
    nm_h5_attr_write_i64(t, file, "step", step);
    nm_h5_attr_write_i64(t, file, "tokens_seen", tokens_seen);
    if (run_id && run_id[0]) nm_h5_attr_write_str(t, file, "run_id", run_id);

    hid_t g = NM_H5_TRY(t, H5Gcreate2(file, "config", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
    for (int i = 0; i < nm_config_nkeys(); i++) {
        const nm_config_key *k = nm_config_key_at(i);
        const char *p = (const char *)&m->cfg + k->offset;
        if (k->type == NM_KEY_INT) nm_h5_attr_write_i64(t, g, k->name, *(const int *)p);
        else if (k->type == NM_KEY_FLOAT) nm_h5_attr_write_f64(t, g, k->name, *(const double *)p);
        else nm_h5_attr_write_str(t, g, k->name, p);
    }
    if (g >= 0) H5Gclose(g);

    hsize_t vdim = (hsize_t)vocab->size;
    hid_t vs = NM_H5_TRY(t, H5Screate_simple(1, &vdim, NULL));
    hid_t vd = NM_H5_TRY(t, H5Dcreate2(file, "vocab", H5T_STD_U8LE, vs, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
    if (m->rank != 0) NM_H5_TRY(t, H5Sselect_none(vs));
    NM_H5_TRY(t, H5Dwrite(vd, H5T_NATIVE_UCHAR, vs, vs, dxpl, vocab->bytes));
    if (vd >= 0) H5Dclose(vd);
    if (vs >= 0) H5Sclose(vs);

    write_tree(t, file, lcpl, dxpl, "params", m, m->params);
    if (opt) {
        write_tree(t, file, lcpl, dxpl, "optimizer/m", m, opt->m);
        write_tree(t, file, lcpl, dxpl, "optimizer/v", m, opt->v);
        hid_t og = NM_H5_TRY(t, H5Gopen2(file, "optimizer", H5P_DEFAULT));
        nm_h5_attr_write_i64(t, og, "step", opt->step);
        if (og >= 0) H5Gclose(og);
    }
    NM_H5_TRY(t, H5Fflush(file, H5F_SCOPE_GLOBAL));
    if (dxpl >= 0) H5Pclose(dxpl);
    if (lcpl >= 0) H5Pclose(lcpl);
    if (fapl >= 0) H5Pclose(fapl);
    if (file >= 0) { /* the last data reach the disk here */
        if (t->failed) {
            /* the file is dropped: give back its space first, or a full disk
             * also fails the close and leaves HDF5 holding a broken file */
            if (truncate(tmp, 0) != 0) errno = 0; /* then the close may fail too: nothing more to do */
            H5Fclose(file);
        }
        else NM_H5_TRY(t, H5Fclose(file));
    }
}

int nm_ckpt_save(const char *path, const nm_model *m, const nm_adamw *opt, const nm_vocab *vocab, int64_t step,
                 int64_t tokens_seen, const char *run_id, nm_error *err) {
    nm_h5_quiet();
    char tmp[NM_PATH_MAX + 8], dir[NM_PATH_MAX + 8];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp)
        return nm_fail(err, "checkpoint path '%s' is too long", path);
    /* every rank must see a writable directory before the collective create:
     * a create that fails on some ranks only cannot be undone collectively */
    snprintf(dir, sizeof dir, "%s", path);
    const char *d = dirname(dir);
    int ok = access(d, W_OK | X_OK) == 0;
    if (!ok) nm_fail(err, "cannot create checkpoint '%s': directory '%s': %s", tmp, d, strerror(errno));
    if (!nm_agree(m->comm, ok, err)) return -1;
    nm_h5_try t = {.nranks = m->nranks};
    write_file(&t, tmp, m, opt, vocab, step, tokens_seen, run_id);
    if (t.failed) { /* one process only: several ranks abort inside NM_H5_TRY */
        unlink(tmp);
        return nm_fail(err, "cannot write checkpoint '%s': %s (the previous checkpoints are untouched)", tmp, t.msg);
    }
    NM_MPI_CHECK(MPI_Barrier(m->comm));

    /* test hook: die between the complete temporary file and the rename */
    const char *fault = getenv("NANOMOE_FAULT");
    if (fault && strcmp(fault, "kill-before-rename") == 0 && m->rank == 0) raise(SIGKILL);
    /* publish atomically: rename within the directory, then sync the directory */
    char why[256] = "";
    if (m->rank == 0) {
        if (rename(tmp, path) != 0) {
            ok = 0;
            snprintf(why, sizeof why, "%s", strerror(errno));
        } else {
            int fd = open(d, O_RDONLY);
            if (fd >= 0) {
                fsync(fd);
                close(fd);
            }
        }
    }
    NM_MPI_CHECK(MPI_Bcast(&ok, 1, MPI_INT, 0, m->comm));
    NM_MPI_CHECK(MPI_Bcast(why, sizeof why, MPI_CHAR, 0, m->comm));
    if (!ok) return nm_fail(err, "cannot rename checkpoint '%s' to '%s': %s", tmp, path, why);
    return 0;
}

/* ---------- reading ---------- */

typedef struct {
    nm_config *cfg;
    const char *path;
    nm_error *err;
    int failed;
    int seen_required;
} config_visit;

static herr_t visit_config_attr(hid_t loc, const char *name, const H5A_info_t *info, void *data) {
    (void)info;
    config_visit *cv = data;
    const nm_config_key *k = nm_config_find(name);
    if (!k) {
        nm_warn0("checkpoint '%s': ignoring unknown /config attribute '%s'", cv->path, name);
        return 0;
    }
    char *p = (char *)cv->cfg + k->offset;
    if (k->type == NM_KEY_STRING) {
        char buf[NM_PATH_MAX];
        if (nm_h5_attr_string(loc, name, buf, sizeof buf) != 0) {
            nm_fail(cv->err, "checkpoint '%s': /config attribute '%s' is not a string", cv->path, name);
            cv->failed = 1;
            return 1;
        }
        snprintf(p, k->size, "%s", buf);
        return 0;
    }
    double v;
    if (nm_h5_attr_number(loc, name, &v) != 0) {
        nm_fail(cv->err, "checkpoint '%s': /config attribute '%s' is not a number", cv->path, name);
        cv->failed = 1;
        return 1;
    }
    if (k->type == NM_KEY_INT) {
        if (v != (double)(long long)v || v < k->min || v > k->max) {
            nm_fail(cv->err, "checkpoint '%s': /config attribute %s=%g is not an integer in [%g, %g]", cv->path, name,
                    v, k->min, k->max);
            cv->failed = 1;
            return 1;
        }
        *(int *)p = (int)v;
    } else {
        *(double *)p = v;
    }
    if (k->model_defining) cv->seen_required++;
    return 0;
}

static const char *REQUIRED[] = {"d_model", "n_layers", "n_heads", "d_ff", "n_experts", "top_k", "block_size", "vocab_size"};

/* The header as this rank reads it. */
static int read_header_local(const char *path, nm_config *cfg, nm_vocab *vocab, nm_ckpt_meta *meta, nm_error *err) {
    memset(meta, 0, sizeof *meta);
    hid_t file = nm_h5_open_read(path, "checkpoint", err);
    if (file < 0) return -1;
    int rc = -1;
    char fmt[128];
    double v;
    if (nm_h5_attr_string(file, "format", fmt, sizeof fmt) != 0) {
        nm_fail(err, "checkpoint '%s': no 'format' attribute on / (not a nanomoe checkpoint)", path);
        goto done;
    }
    if (strcmp(fmt, NM_CKPT_FORMAT) != 0) {
        nm_fail(err, "checkpoint '%s': format attribute is '%s', expected '%s'", path, fmt, NM_CKPT_FORMAT);
        goto done;
    }
    if (nm_h5_attr_number(file, "format_version", &v) != 0) {
        nm_fail(err, "checkpoint '%s': no 'format_version' attribute on /", path);
        goto done;
    }
    if (v != NM_CKPT_VERSION) {
        nm_fail(err, "checkpoint '%s': format_version %g is not supported (this build reads version %d)", path, v,
                NM_CKPT_VERSION);
        goto done;
    }
    meta->step = nm_h5_attr_number(file, "step", &v) == 0 ? (int64_t)v : 0;
    meta->tokens_seen = nm_h5_attr_number(file, "tokens_seen", &v) == 0 ? (int64_t)v : 0;
    if (nm_h5_attr_string(file, "run_id", meta->run_id, sizeof meta->run_id) != 0) meta->run_id[0] = '\0';

    nm_config_defaults(cfg);
    if (H5Lexists(file, "config", H5P_DEFAULT) <= 0) {
        nm_fail(err, "checkpoint '%s': missing group /config", path);
        goto done;
    }
    hid_t g = H5Gopen2(file, "config", H5P_DEFAULT);
    config_visit cv = {cfg, path, err, 0, 0};
    hsize_t idx = 0;
    H5Aiterate2(g, H5_INDEX_NAME, H5_ITER_INC, &idx, visit_config_attr, &cv);
    for (size_t i = 0; i < sizeof REQUIRED / sizeof *REQUIRED && !cv.failed; i++)
        if (H5Aexists(g, REQUIRED[i]) <= 0) {
            nm_fail(err, "checkpoint '%s': /config has no attribute '%s'", path, REQUIRED[i]);
            cv.failed = 1;
        }
    H5Gclose(g);
    if (cv.failed) goto done;
    nm_error e;
    if (nm_config_validate(cfg, &e) != 0) {
        nm_fail(err, "checkpoint '%s': %s", path, e.msg);
        goto done;
    }

    if (H5Lexists(file, "vocab", H5P_DEFAULT) <= 0) {
        nm_fail(err, "checkpoint '%s': missing dataset /vocab", path);
        goto done;
    }
    hid_t vd = H5Dopen2(file, "vocab", H5P_DEFAULT);
    hid_t vs = H5Dget_space(vd);
    hssize_t nv = H5Sget_simple_extent_npoints(vs);
    unsigned char bytes[256];
    int vok = H5Sget_simple_extent_ndims(vs) == 1 && nv == cfg->vocab_size &&
              H5Dread(vd, H5T_NATIVE_UCHAR, H5S_ALL, H5S_ALL, H5P_DEFAULT, bytes) >= 0;
    H5Sclose(vs);
    H5Dclose(vd);
    if (!vok) {
        nm_fail(err, "checkpoint '%s': /vocab must be %d bytes (vocab_size in /config), found %lld", path,
                cfg->vocab_size, (long long)nv);
        goto done;
    }
    if (nm_vocab_from_bytes(vocab, bytes, cfg->vocab_size, &e) != 0) {
        nm_fail(err, "checkpoint '%s': /vocab: %s", path, e.msg);
        goto done;
    }
    if (H5Lexists(file, "optimizer", H5P_DEFAULT) > 0) {
        meta->has_optimizer = 1;
        hid_t og = H5Gopen2(file, "optimizer", H5P_DEFAULT);
        meta->optimizer_step = nm_h5_attr_number(og, "step", &v) == 0 ? (int64_t)v : meta->step;
        H5Gclose(og);
    }
    rc = 0;
done:
    H5Fclose(file);
    return rc;
}

/* What a rank read of a checkpoint's header, as lines to compare with rank 0's. */
static void header_identity(const nm_config *cfg, const nm_vocab *vocab, const nm_ckpt_meta *meta, char *out,
                            size_t cap) {
    size_t o = (size_t)snprintf(out, cap, "step=%lld\ntokens_seen=%lld\nrun_id=%s\noptimizer_step=%lld\n",
                                (long long)meta->step, (long long)meta->tokens_seen, meta->run_id,
                                (long long)(meta->has_optimizer ? meta->optimizer_step : -1));
    if (o < cap) o += nm_config_lines(cfg, out + o, cap - o);
    if (o < cap)
        snprintf(out + o, cap - o, "vocab=%016llx\n",
                 (unsigned long long)nm_hash64(vocab->bytes, (size_t)vocab->size, 0));
}

int nm_ckpt_read_header(const char *path, MPI_Comm comm, nm_config *cfg, nm_vocab *vocab, nm_ckpt_meta *meta,
                        nm_error *err) {
    int ok = read_header_local(path, cfg, vocab, meta, err) == 0;
    char *id = nm_malloc(64 * 1024);
    id[0] = '\0';
    if (ok) header_identity(cfg, vocab, meta, id, 64 * 1024);
    char what[NM_PATH_MAX + 64];
    snprintf(what, sizeof what, "checkpoint '%s' as read here", path);
    int all_failed = 0, agreed = nm_agree_same_ex(comm, ok, what, id, err, &all_failed);
    free(id);
    return agreed ? 0 : all_failed ? -2 : -1;
}

static void shape_text(char *buf, size_t n, int ndim, const hsize_t *d) {
    size_t o = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < ndim && o < n; i++) o += (size_t)snprintf(buf + o, n - o, i ? ", %llu" : "%llu", (unsigned long long)d[i]);
    if (o < n) snprintf(buf + o, n - o, "]");
}

/* Reads one tensor (this rank's experts only) after checking its shape. */
static int read_tensor(hid_t file, const char *path, const char *dpath, const nm_param_info *p,
                       const nm_param_layout *l, float *dst, nm_error *err) {
    if (H5Lexists(file, dpath, H5P_DEFAULT) <= 0) {
        /* H5Lexists fails on a missing intermediate group: report the dataset either way */
        return nm_fail(err, "checkpoint '%s': missing dataset %s", path, dpath);
    }
    hid_t ds = H5Dopen2(file, dpath, H5P_DEFAULT);
    if (ds < 0) return nm_fail(err, "checkpoint '%s': %s is not a dataset", path, dpath);
    hid_t fs = H5Dget_space(ds);
    hsize_t dims[8] = {0};
    int nd = H5Sget_simple_extent_ndims(fs);
    int ok = nd == p->ndim && nd <= 3;
    if (nd > 0 && nd <= 8) H5Sget_simple_extent_dims(fs, dims, NULL);
    for (int i = 0; ok && i < nd; i++) ok = dims[i] == (hsize_t)p->shape[i];
    if (!ok) {
        char got[96], want[96];
        hsize_t w[3] = {(hsize_t)p->shape[0], (hsize_t)p->shape[1], (hsize_t)p->shape[2]};
        shape_text(got, sizeof got, nd > 0 && nd <= 8 ? nd : 0, dims);
        shape_text(want, sizeof want, p->ndim, w);
        H5Sclose(fs);
        H5Dclose(ds);
        return nm_fail(err, "checkpoint '%s': %s has shape %s, expected %s from its /config", path, dpath, got, want);
    }
    hsize_t start[3] = {0, 0, 0}, count[3] = {dims[0], nd > 1 ? dims[1] : 1, nd > 2 ? dims[2] : 1};
    if (p->block == NM_BLOCK_EXPERT) {
        start[0] = (hsize_t)l->expert_begin;
        count[0] = (hsize_t)l->expert_count;
    }
    hid_t ms = H5Screate_simple(nd, count, NULL);
    H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, count, NULL);
    herr_t r = count[0] > 0 ? H5Dread(ds, H5T_NATIVE_FLOAT, ms, fs, H5P_DEFAULT, dst) : 0;
    H5Sclose(ms);
    H5Sclose(fs);
    H5Dclose(ds);
    if (r < 0) return nm_fail(err, "checkpoint '%s': cannot read %s (file truncated or corrupt?)", path, dpath);
    return 0;
}

static int count_blocks(hid_t file, const char *group) {
    char p[256];
    snprintf(p, sizeof p, "%s/blocks", group);
    if (H5Lexists(file, group, H5P_DEFAULT) <= 0 || H5Lexists(file, p, H5P_DEFAULT) <= 0) return -1;
    hid_t g = H5Gopen2(file, p, H5P_DEFAULT);
    H5G_info_t info;
    int n = H5Gget_info(g, &info) >= 0 ? (int)info.nlinks : -1;
    H5Gclose(g);
    return n;
}

static int read_tree_open(hid_t file, const char *path, const char *group, const nm_param_layout *l, float *dense,
                          float *expert, int n_layers, nm_error *err) {
    int nb = count_blocks(file, group);
    if (nb >= 0 && n_layers >= 0 && nb != n_layers)
        return nm_fail(err, "checkpoint '%s': %s/blocks has %d blocks, expected n_layers=%d from its /config", path,
                       group, nb, n_layers);
    char dpath[256];
    for (int i = 0; i < l->n; i++) {
        const nm_param_info *p = &l->info[i];
        snprintf(dpath, sizeof dpath, "%s/%s", group, p->name);
        if (read_tensor(file, path, dpath, p, l, nm_param_ptr(l, i, dense, expert), err) != 0) return -1;
    }
    return 0;
}

int nm_ckpt_read_tree(const char *path, MPI_Comm comm, const char *group, const nm_param_layout *l, float *dense,
                      float *expert, nm_error *err) {
    hid_t file = nm_h5_open_read(path, "checkpoint", err);
    int rc = file < 0 ? -1 : read_tree_open(file, path, group, l, dense, expert, -1, err);
    if (file >= 0) H5Fclose(file);
    return nm_agree(comm, rc == 0, err) ? 0 : -1;
}

/* The dense block (and its moments) as this rank read them, to compare with rank 0's. */
static void dense_identity(const nm_model *m, const nm_adamw *opt, char *out, size_t cap) {
    size_t n = sizeof(float) * m->layout.n_dense;
    snprintf(out, cap, "dense parameters=%016llx\nfirst moments=%016llx\nsecond moments=%016llx\n",
             (unsigned long long)nm_hash64(m->params[0], n, 1),
             (unsigned long long)(opt ? nm_hash64(opt->m[0], n, 2) : 0),
             (unsigned long long)(opt ? nm_hash64(opt->v[0], n, 3) : 0));
}

int nm_ckpt_read_params(const char *path, nm_model *m, nm_adamw *opt, nm_error *err) {
    hid_t file = nm_h5_open_read(path, "checkpoint", err);
    int rc = file < 0 ? -1 : read_tree_open(file, path, "/params", &m->layout, m->params[0], m->params[1],
                                            m->cfg.n_layers, err);
    if (rc == 0 && opt) {
        rc = read_tree_open(file, path, "/optimizer/m", &m->layout, opt->m[0], opt->m[1], m->cfg.n_layers, err);
        if (rc == 0)
            rc = read_tree_open(file, path, "/optimizer/v", &m->layout, opt->v[0], opt->v[1], m->cfg.n_layers, err);
        double v;
        hid_t og = rc == 0 ? H5Gopen2(file, "optimizer", H5P_DEFAULT) : -1;
        if (og >= 0) {
            opt->step = nm_h5_attr_number(og, "step", &v) == 0 ? (int64_t)v : 0;
            H5Gclose(og);
        }
    }
    if (file >= 0) H5Fclose(file);
    /* the dense tensors every rank read must be rank 0's: a file replaced on one node would otherwise diverge silently */
    char id[256] = "", what[NM_PATH_MAX + 64];
    if (rc == 0) dense_identity(m, opt, id, sizeof id);
    snprintf(what, sizeof what, "checkpoint '%s' as read here", path);
    int all_failed = 0;
    return nm_agree_same_ex(m->comm, rc == 0, what, id, err, &all_failed) ? 0 : all_failed ? -2 : -1;
}
