/* HDF5 helpers shared by checkpoints and run.h5: scalar attributes, and
 * opening a file for reading on one rank alone. */
#ifndef NANOMOE_H5UTIL_H
#define NANOMOE_H5UTIL_H

#include <stddef.h>
#include <stdint.h>

#include "nanomoe/error.h"

/* Turns off HDF5's own error printing: nanomoe reports its own messages. */
void nm_h5_quiet(void);

/* Scalar attributes on an HDF5 object (hid_t), replacing one of the same
 * name; failures go through t (see NM_H5_TRY). */
void nm_h5_attr_write_i64(nm_h5_try *t, int64_t obj, const char *name, int64_t v);
void nm_h5_attr_write_f64(nm_h5_try *t, int64_t obj, const char *name, double v);
void nm_h5_attr_write_str(nm_h5_try *t, int64_t obj, const char *name, const char *v);

/* Reads a scalar string attribute (fixed or variable length, any character
 * set) into buf; -1 if absent or not a string. */
int nm_h5_attr_string(int64_t obj, const char *name, char *buf, size_t n);
/* Reads a scalar numeric attribute as double; -1 if absent or not a number. */
int nm_h5_attr_number(int64_t obj, const char *name, double *v);

/* Opens path read-only with the serial driver on this rank alone, so that a
 * file one rank cannot read never leaves other ranks inside a collective
 * call. Returns the file (hid_t) or -1 with a message naming `what` and the
 * path: missing or unreadable, not HDF5, or truncated/corrupt. */
int64_t nm_h5_open_read(const char *path, const char *what, nm_error *err);

#endif
