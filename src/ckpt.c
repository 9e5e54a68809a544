/* Schema-v1 checkpoints with parallel HDF5: every rank makes the same
 * collective calls; dense tensors are written by rank 0, expert tensors by
 * the rank that owns each expert hyperslab. */
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

/* HDF5 prints its own error stack by default; we report our own messages. */
static void h5_quiet(void) { H5Eset_auto2(H5E_DEFAULT, NULL, NULL); }

static hid_t fapl_mpio(MPI_Comm comm) {
    hid_t fapl = NM_H5_CHECK(H5Pcreate(H5P_FILE_ACCESS));
    NM_H5_CHECK(H5Pset_fapl_mpio(fapl, comm, MPI_INFO_NULL));
    return fapl;
}

/* ---------- writing ---------- */

static void attr_i64(hid_t obj, const char *name, int64_t v) {
    hid_t sp = NM_H5_CHECK(H5Screate(H5S_SCALAR));
    hid_t a = NM_H5_CHECK(H5Acreate2(obj, name, H5T_STD_I64LE, sp, H5P_DEFAULT, H5P_DEFAULT));
    NM_H5_CHECK(H5Awrite(a, H5T_NATIVE_INT64, &v));
    NM_H5_CHECK(H5Aclose(a));
    NM_H5_CHECK(H5Sclose(sp));
}

static void attr_f64(hid_t obj, const char *name, double v) {
    hid_t sp = NM_H5_CHECK(H5Screate(H5S_SCALAR));
    hid_t a = NM_H5_CHECK(H5Acreate2(obj, name, H5T_IEEE_F64LE, sp, H5P_DEFAULT, H5P_DEFAULT));
    NM_H5_CHECK(H5Awrite(a, H5T_NATIVE_DOUBLE, &v));
    NM_H5_CHECK(H5Aclose(a));
    NM_H5_CHECK(H5Sclose(sp));
}

static void attr_str(hid_t obj, const char *name, const char *v) {
    hid_t t = NM_H5_CHECK(H5Tcopy(H5T_C_S1));
    NM_H5_CHECK(H5Tset_size(t, H5T_VARIABLE));
    NM_H5_CHECK(H5Tset_cset(t, H5T_CSET_UTF8));
    hid_t sp = NM_H5_CHECK(H5Screate(H5S_SCALAR));
    hid_t a = NM_H5_CHECK(H5Acreate2(obj, name, t, sp, H5P_DEFAULT, H5P_DEFAULT));
    NM_H5_CHECK(H5Awrite(a, t, &v));
    NM_H5_CHECK(H5Aclose(a));
    NM_H5_CHECK(H5Sclose(sp));
    NM_H5_CHECK(H5Tclose(t));
}

/* Writes one tensor of a block: dense by rank 0 only, experts by their owner. */
static void write_tensor(hid_t file, hid_t lcpl, hid_t dxpl, const char *path, const nm_param_info *p,
                         const float *data, const nm_model *m) {
    hsize_t dims[3] = {(hsize_t)p->shape[0], (hsize_t)p->shape[1], (hsize_t)p->shape[2]};
    hid_t fs = NM_H5_CHECK(H5Screate_simple(p->ndim, dims, NULL));
    hid_t ds = NM_H5_CHECK(H5Dcreate2(file, path, H5T_IEEE_F32LE, fs, lcpl, H5P_DEFAULT, H5P_DEFAULT));
    hsize_t count[3] = {dims[0], dims[1], dims[2]}, start[3] = {0, 0, 0};
    int writes;
    if (p->block == NM_BLOCK_EXPERT) {
        start[0] = (hsize_t)m->layout.expert_begin;
        count[0] = (hsize_t)m->layout.expert_count;
        writes = m->layout.expert_writer && m->layout.expert_count > 0;
    } else {
        writes = m->rank == 0;
    }
    hid_t ms = NM_H5_CHECK(H5Screate_simple(p->ndim, count, NULL));
    if (writes) {
        NM_H5_CHECK(H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, count, NULL));
    } else {
        NM_H5_CHECK(H5Sselect_none(fs));
        NM_H5_CHECK(H5Sselect_none(ms));
    }
    NM_H5_CHECK(H5Dwrite(ds, H5T_NATIVE_FLOAT, ms, fs, dxpl, data));
    NM_H5_CHECK(H5Sclose(ms));
    NM_H5_CHECK(H5Dclose(ds));
    NM_H5_CHECK(H5Sclose(fs));
}

static void write_tree(hid_t file, hid_t lcpl, hid_t dxpl, const char *group, const nm_model *m, float *const blocks[2]) {
    char path[256];
    for (int i = 0; i < m->layout.n; i++) {
        const nm_param_info *p = &m->layout.info[i];
        snprintf(path, sizeof path, "%s/%s", group, p->name);
        write_tensor(file, lcpl, dxpl, path, p, blocks[p->block] + p->offset, m);
    }
}

/* All ranks agree on a status (any failure fails everyone). */
static int agree(MPI_Comm comm, int ok) {
    int all = 0;
    NM_MPI_CHECK(MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_LAND, comm));
    return all;
}

int nm_ckpt_save(const char *path, const nm_model *m, const nm_adamw *opt, const nm_vocab *vocab, int64_t step,
                 int64_t tokens_seen, nm_error *err) {
    h5_quiet();
    char tmp[NM_PATH_MAX + 8];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp)
        return nm_fail(err, "checkpoint path '%s' is too long", path);
    hid_t fapl = fapl_mpio(m->comm);
    hid_t file = H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
    NM_H5_CHECK(H5Pclose(fapl));
    if (!agree(m->comm, file >= 0)) {
        if (file >= 0) H5Fclose(file);
        return nm_fail(err, "cannot create checkpoint '%s' (is the directory there and writable?)", tmp);
    }
    hid_t lcpl = NM_H5_CHECK(H5Pcreate(H5P_LINK_CREATE));
    NM_H5_CHECK(H5Pset_create_intermediate_group(lcpl, 1));
    hid_t dxpl = NM_H5_CHECK(H5Pcreate(H5P_DATASET_XFER));
    NM_H5_CHECK(H5Pset_dxpl_mpio(dxpl, H5FD_MPIO_COLLECTIVE));

    attr_str(file, "format", NM_CKPT_FORMAT);
    attr_i64(file, "format_version", NM_CKPT_VERSION);
    attr_i64(file, "step", step);
    attr_i64(file, "tokens_seen", tokens_seen);

    hid_t g = NM_H5_CHECK(H5Gcreate2(file, "config", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
    for (int i = 0; i < nm_config_nkeys(); i++) {
        const nm_config_key *k = nm_config_key_at(i);
        const char *p = (const char *)&m->cfg + k->offset;
        if (k->type == NM_KEY_INT) attr_i64(g, k->name, *(const int *)p);
        else if (k->type == NM_KEY_FLOAT) attr_f64(g, k->name, *(const double *)p);
        else attr_str(g, k->name, p);
    }
    NM_H5_CHECK(H5Gclose(g));

    hsize_t vdim = (hsize_t)vocab->size;
    hid_t vs = NM_H5_CHECK(H5Screate_simple(1, &vdim, NULL));
    hid_t vd = NM_H5_CHECK(H5Dcreate2(file, "vocab", H5T_STD_U8LE, vs, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
    if (m->rank != 0) NM_H5_CHECK(H5Sselect_none(vs));
    NM_H5_CHECK(H5Dwrite(vd, H5T_NATIVE_UCHAR, vs, vs, dxpl, vocab->bytes));
    NM_H5_CHECK(H5Dclose(vd));
    NM_H5_CHECK(H5Sclose(vs));

    write_tree(file, lcpl, dxpl, "params", m, m->params);
    if (opt) {
        write_tree(file, lcpl, dxpl, "optimizer/m", m, opt->m);
        write_tree(file, lcpl, dxpl, "optimizer/v", m, opt->v);
        hid_t og = NM_H5_CHECK(H5Gopen2(file, "optimizer", H5P_DEFAULT));
        attr_i64(og, "step", opt->step);
        NM_H5_CHECK(H5Gclose(og));
    }
    NM_H5_CHECK(H5Pclose(dxpl));
    NM_H5_CHECK(H5Pclose(lcpl));
    NM_H5_CHECK(H5Fflush(file, H5F_SCOPE_GLOBAL));
    NM_H5_CHECK(H5Fclose(file));
    NM_MPI_CHECK(MPI_Barrier(m->comm));

    /* test hook: die between the complete temporary file and the rename */
    const char *fault = getenv("NANOMOE_FAULT");
    if (fault && strcmp(fault, "kill-before-rename") == 0 && m->rank == 0) raise(SIGKILL);
    /* publish atomically: rename within the directory, then sync the directory */
    int ok = 1;
    char why[256] = "";
    if (m->rank == 0) {
        if (rename(tmp, path) != 0) {
            ok = 0;
            snprintf(why, sizeof why, "%s", strerror(errno));
        } else {
            char dir[NM_PATH_MAX + 8];
            snprintf(dir, sizeof dir, "%s", path);
            int fd = open(dirname(dir), O_RDONLY);
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

static int open_checked(const char *path, MPI_Comm comm, hid_t *file, nm_error *err) {
    h5_quiet();
    FILE *f = fopen(path, "rb");
    if (!f) return nm_fail(err, "cannot read checkpoint '%s': %s", path, strerror(errno));
    fclose(f);
    if (H5Fis_hdf5(path) <= 0) return nm_fail(err, "checkpoint '%s' is not an HDF5 file", path);
    hid_t fapl = fapl_mpio(comm);
    *file = H5Fopen(path, H5F_ACC_RDONLY, fapl);
    NM_H5_CHECK(H5Pclose(fapl));
    if (!agree(comm, *file >= 0)) {
        if (*file >= 0) H5Fclose(*file);
        return nm_fail(err, "cannot open checkpoint '%s': the HDF5 file is truncated or corrupt", path);
    }
    return 0;
}

int nm_h5_attr_string(int64_t obj, const char *name, char *buf, size_t n) {
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
    if (a < 0) return -1;
    hid_t t = H5Aget_type(a);
    int rc = -1;
    if (t >= 0 && H5Tget_class(t) == H5T_STRING) {
        if (H5Tis_variable_str(t) > 0) {
            char *s = NULL;
            hid_t mt = H5Tcopy(H5T_C_S1);
            H5Tset_size(mt, H5T_VARIABLE);
            H5Tset_cset(mt, H5Tget_cset(t));
            if (H5Aread(a, mt, &s) >= 0 && s) {
                snprintf(buf, n, "%s", s);
                H5free_memory(s);
                rc = 0;
            }
            H5Tclose(mt);
        } else {
            size_t sz = H5Tget_size(t);
            char *s = calloc(sz + 1, 1);
            hid_t mt = H5Tcopy(H5T_C_S1);
            H5Tset_size(mt, sz + 1);
            if (s && H5Aread(a, mt, s) >= 0) {
                snprintf(buf, n, "%s", s);
                rc = 0;
            }
            free(s);
            H5Tclose(mt);
        }
    }
    if (t >= 0) H5Tclose(t);
    H5Aclose(a);
    return rc;
}

/* Reads a scalar numeric attribute as double; -1 if absent or not a number. */
static int read_attr_num(hid_t obj, const char *name, double *v) {
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
    if (a < 0) return -1;
    hid_t t = H5Aget_type(a), sp = H5Aget_space(a);
    int rc = -1;
    H5T_class_t cls = t >= 0 ? H5Tget_class(t) : H5T_NO_CLASS;
    if ((cls == H5T_INTEGER || cls == H5T_FLOAT) && H5Sget_simple_extent_npoints(sp) == 1)
        rc = H5Aread(a, H5T_NATIVE_DOUBLE, v) >= 0 ? 0 : -1;
    if (sp >= 0) H5Sclose(sp);
    if (t >= 0) H5Tclose(t);
    H5Aclose(a);
    return rc;
}

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
    if (read_attr_num(loc, name, &v) != 0) {
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

int nm_ckpt_read_header(const char *path, MPI_Comm comm, nm_config *cfg, nm_vocab *vocab, nm_ckpt_meta *meta,
                        nm_error *err) {
    hid_t file;
    if (open_checked(path, comm, &file, err) != 0) return -1;
    int rc = -1;
    char fmt[128];
    double v;
    memset(meta, 0, sizeof *meta);
    if (nm_h5_attr_string(file, "format", fmt, sizeof fmt) != 0) {
        nm_fail(err, "checkpoint '%s': no 'format' attribute on / (not a nanomoe checkpoint)", path);
        goto done;
    }
    if (strcmp(fmt, NM_CKPT_FORMAT) != 0) {
        nm_fail(err, "checkpoint '%s': format attribute is '%s', expected '%s'", path, fmt, NM_CKPT_FORMAT);
        goto done;
    }
    if (read_attr_num(file, "format_version", &v) != 0) {
        nm_fail(err, "checkpoint '%s': no 'format_version' attribute on /", path);
        goto done;
    }
    if (v != NM_CKPT_VERSION) {
        nm_fail(err, "checkpoint '%s': format_version %g is not supported (this build reads version %d)", path, v,
                NM_CKPT_VERSION);
        goto done;
    }
    meta->step = read_attr_num(file, "step", &v) == 0 ? (int64_t)v : 0;
    meta->tokens_seen = read_attr_num(file, "tokens_seen", &v) == 0 ? (int64_t)v : 0;

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
        meta->optimizer_step = read_attr_num(og, "step", &v) == 0 ? (int64_t)v : meta->step;
        H5Gclose(og);
    }
    rc = 0;
done:
    H5Fclose(file);
    return rc;
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
    hid_t file;
    if (open_checked(path, comm, &file, err) != 0) return -1;
    int rc = read_tree_open(file, path, group, l, dense, expert, -1, err);
    H5Fclose(file);
    return agree(comm, rc == 0) ? 0 : -1;
}

int nm_ckpt_read_params(const char *path, nm_model *m, nm_adamw *opt, nm_error *err) {
    hid_t file;
    if (open_checked(path, m->comm, &file, err) != 0) return -1;
    int rc = read_tree_open(file, path, "/params", &m->layout, m->params[0], m->params[1], m->cfg.n_layers, err);
    if (rc == 0 && opt) {
        rc = read_tree_open(file, path, "/optimizer/m", &m->layout, opt->m[0], opt->m[1], m->cfg.n_layers, err);
        if (rc == 0)
            rc = read_tree_open(file, path, "/optimizer/v", &m->layout, opt->v[0], opt->v[1], m->cfg.n_layers, err);
        double v;
        hid_t og = rc == 0 ? H5Gopen2(file, "optimizer", H5P_DEFAULT) : -1;
        if (og >= 0) {
            opt->step = read_attr_num(og, "step", &v) == 0 ? (int64_t)v : 0;
            H5Gclose(og);
        }
    }
    H5Fclose(file);
    return agree(m->comm, rc == 0) ? 0 : -1;
}
