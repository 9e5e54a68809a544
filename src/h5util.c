/* HDF5 helpers shared by checkpoints and run.h5. */
#include "nanomoe/h5util.h"

#include <errno.h>
#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void nm_h5_quiet(void) { H5Eset_auto2(H5E_DEFAULT, NULL, NULL); }

/* Creates (or replaces) a scalar attribute of file type ftype and writes v. */
static void attr_write(nm_h5_try *t, hid_t obj, const char *name, hid_t ftype, hid_t mtype, const void *v) {
    if (t->failed) return;
    if (H5Aexists(obj, name) > 0) NM_H5_TRY(t, H5Adelete(obj, name));
    hid_t sp = NM_H5_TRY(t, H5Screate(H5S_SCALAR));
    hid_t a = NM_H5_TRY(t, H5Acreate2(obj, name, ftype, sp, H5P_DEFAULT, H5P_DEFAULT));
    NM_H5_TRY(t, H5Awrite(a, mtype, v));
    if (a >= 0) H5Aclose(a);
    if (sp >= 0) H5Sclose(sp);
}

void nm_h5_attr_write_i64(nm_h5_try *t, int64_t obj, const char *name, int64_t v) {
    attr_write(t, obj, name, H5T_STD_I64LE, H5T_NATIVE_INT64, &v);
}

void nm_h5_attr_write_f64(nm_h5_try *t, int64_t obj, const char *name, double v) {
    attr_write(t, obj, name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &v);
}

void nm_h5_attr_write_str(nm_h5_try *t, int64_t obj, const char *name, const char *v) {
    if (t->failed) return;
    hid_t type = NM_H5_TRY(t, H5Tcopy(H5T_C_S1));
    NM_H5_TRY(t, H5Tset_size(type, H5T_VARIABLE));
    NM_H5_TRY(t, H5Tset_cset(type, H5T_CSET_UTF8));
    attr_write(t, obj, name, type, type, &v);
    if (type >= 0) H5Tclose(type);
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

int nm_h5_attr_number(int64_t obj, const char *name, double *v) {
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

int64_t nm_h5_open_read(const char *path, const char *what, nm_error *err) {
    nm_h5_quiet();
    FILE *f = fopen(path, "rb");
    if (!f) return nm_fail(err, "cannot read %s '%s': %s", what, path, strerror(errno));
    fclose(f);
    if (H5Fis_hdf5(path) <= 0) return nm_fail(err, "%s '%s' is not an HDF5 file", what, path);
    hid_t file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (file < 0) return nm_fail(err, "cannot open %s '%s': the HDF5 file is truncated or corrupt", what, path);
    return file;
}
