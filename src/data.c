/* Character-level data: vocabulary, encoding, train/val split and batch sampling. */
#include "nanomoe/data.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "nanomoe/agree.h"
#include "nanomoe/rng.h"

void nm_vocab_from_text(nm_vocab *v, const unsigned char *text, size_t n) {
    int seen[256] = {0};
    for (size_t i = 0; i < n; i++) seen[text[i]] = 1;
    v->size = 0;
    for (int b = 0; b < 256; b++) {
        v->id_of[b] = -1;
        if (seen[b]) {
            v->id_of[b] = (int16_t)v->size;
            v->bytes[v->size++] = (unsigned char)b;
        }
    }
}

int nm_vocab_from_bytes(nm_vocab *v, const unsigned char *bytes, int n, nm_error *err) {
    if (n < 1 || n > 256) return nm_fail(err, "vocabulary size %d is not in [1, 256]", n);
    for (int b = 0; b < 256; b++) v->id_of[b] = -1;
    for (int i = 0; i < n; i++) {
        if (i > 0 && bytes[i] <= bytes[i - 1])
            return nm_fail(err, "vocabulary bytes are not strictly ascending at id %d", i);
        v->bytes[i] = bytes[i];
        v->id_of[bytes[i]] = (int16_t)i;
    }
    v->size = n;
    return 0;
}

void nm_byte_describe(unsigned char b, char buf[16]) {
    if (b == '\n') snprintf(buf, 16, "'\\n'");
    else if (b == '\t') snprintf(buf, 16, "'\\t'");
    else if (b == '\r') snprintf(buf, 16, "'\\r'");
    else if (b == '\'') snprintf(buf, 16, "'\\''");
    else if (b >= 32 && b < 127) snprintf(buf, 16, "'%c'", b);
    else snprintf(buf, 16, "byte 0x%02X", b);
}

int nm_vocab_encode(const nm_vocab *v, const unsigned char *text, size_t n, int32_t *ids, nm_error *err) {
    for (size_t i = 0; i < n; i++) {
        int id = v->id_of[text[i]];
        if (id < 0) {
            char d[16];
            nm_byte_describe(text[i], d);
            return nm_fail(err, "character %s at offset %zu is not in the vocabulary (%d characters)", d, i, v->size);
        }
        ids[i] = id;
    }
    return 0;
}

int nm_dataset_load(nm_dataset *d, const char *path, const nm_vocab *vocab, nm_error *err) {
    memset(d, 0, sizeof *d);
    struct stat st;
    if (stat(path, &st) != 0) return nm_fail(err, "data: cannot read '%s': %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode)) return nm_fail(err, "data: '%s' is not a regular file (expected a text file)", path);
    FILE *f = fopen(path, "rb");
    if (!f) return nm_fail(err, "data: cannot read '%s': %s", path, strerror(errno));
    if (fseek(f, 0, SEEK_END) != 0) {
        fclose(f);
        return nm_fail(err, "data: cannot seek in '%s' (expected a regular text file)", path);
    }
    long n = ftell(f);
    rewind(f);
    if (n <= 0) {
        fclose(f);
        return nm_fail(err, "data: '%s' is empty (expected a text file)", path);
    }
    unsigned char *text = nm_malloc((size_t)n);
    size_t got = fread(text, 1, (size_t)n, f);
    fclose(f);
    if (got != (size_t)n) {
        free(text);
        return nm_fail(err, "data: short read on '%s' (%zu of %ld bytes)", path, got, n);
    }
    if (vocab) d->vocab = *vocab;
    else nm_vocab_from_text(&d->vocab, text, (size_t)n);
    d->tokens = nm_malloc(sizeof(int32_t) * (size_t)n);
    nm_error e;
    if (nm_vocab_encode(&d->vocab, text, (size_t)n, d->tokens, &e) != 0) {
        free(text);
        nm_dataset_free(d);
        return nm_fail(err, "data: '%s': %s", path, e.msg);
    }
    d->hash = nm_hash64(text, (size_t)n, 0);
    free(text);
    d->n_tokens = (size_t)n;
    d->n_train = (size_t)((double)n * 0.9); /* int(len * (1 - 0.1)), as the reference */
    return 0;
}

void nm_dataset_free(nm_dataset *d) {
    free(d->tokens);
    d->tokens = NULL;
    d->n_tokens = d->n_train = 0;
}

int nm_dataset_check_windows(const nm_dataset *d, int block_size, const char *path, nm_error *err) {
    size_t need = (size_t)block_size + 2;
    size_t ntrain = d->n_train, nval = d->n_tokens - d->n_train;
    if (ntrain < need || nval < need)
        return nm_fail(err,
                       "data: '%s' has %zu characters: its train split (%zu) and validation split (%zu) must each hold "
                       "at least block_size + 2 = %zu (the text needs at least %zu characters)",
                       path, d->n_tokens, ntrain, nval, need, (size_t)(need * 10 + 10));
    return 0;
}

void nm_batch_sample(const int32_t *split, size_t len, int T, uint64_t seed, int stream, uint64_t step, int b0,
                     int b1, int32_t *x, int32_t *y) {
    uint64_t key = nm_rng_key(seed, (uint64_t)stream, step, 0);
    uint64_t nstart = len - (uint64_t)T - 1;
    for (int b = b0; b < b1; b++) {
        size_t s = (size_t)nm_rng_below(key, (uint64_t)b, nstart);
        memcpy(x + (size_t)(b - b0) * T, split + s, sizeof(int32_t) * (size_t)T);
        memcpy(y + (size_t)(b - b0) * T, split + s + 1, sizeof(int32_t) * (size_t)T);
    }
}
