/* Character-level data: vocabulary, encoding, train/val split and batch sampling. */
#ifndef NANOMOE_DATA_H
#define NANOMOE_DATA_H

#include <stddef.h>
#include <stdint.h>

#include "nanomoe/error.h"

/* Token id <-> byte. Ids are the ranks of the distinct bytes in ascending order. */
typedef struct nm_vocab {
    int size;
    unsigned char bytes[256]; /* bytes[id] */
    int16_t id_of[256];       /* id of a byte, -1 when absent */
} nm_vocab;

/* Builds the vocabulary of a text. */
void nm_vocab_from_text(nm_vocab *v, const unsigned char *text, size_t n);
/* Builds a vocabulary from a byte list (a checkpoint's /vocab); bytes must be
 * strictly ascending and unique. */
int nm_vocab_from_bytes(nm_vocab *v, const unsigned char *bytes, int n, nm_error *err);

/* Encodes text into ids; a byte outside the vocabulary is an error naming it
 * and its offset. */
int nm_vocab_encode(const nm_vocab *v, const unsigned char *text, size_t n, int32_t *ids, nm_error *err);
/* Describes a byte for messages: 'a', '\n' or 0xC3. */
void nm_byte_describe(unsigned char b, char buf[16]);

/* A tokenised text split into train (first 90%) and validation (last 10%). */
typedef struct nm_dataset {
    nm_vocab vocab;
    int32_t *tokens;
    size_t n_tokens;
    size_t n_train; /* train = tokens[0, n_train), val = tokens[n_train, n_tokens) */
    uint64_t hash;  /* of the file's bytes (nm_hash64): compared across ranks */
} nm_dataset;

/* Reads and tokenises a text file. With vocab == NULL the vocabulary comes
 * from the text; otherwise every byte must be in the given vocabulary. */
int nm_dataset_load(nm_dataset *d, const char *path, const nm_vocab *vocab, nm_error *err);
void nm_dataset_free(nm_dataset *d);

/* Checks both splits hold at least one training window of block_size + 1 tokens
 * plus one start position (the reference draws starts in [0, len - T - 1)). */
int nm_dataset_check_windows(const nm_dataset *d, int block_size, const char *path, nm_error *err);

/* Random-window streams: each draw is a function of (seed, stream, step, b). */
enum { NM_STREAM_TRAIN = 1, NM_STREAM_EVAL = 2 };

/* Fills sequences [b0, b1) of the global batch of `step`: start offset of
 * sequence b is uniform in [0, len - T - 1); x = split[s, s+T), y = split[s+1, s+T+1).
 * x and y hold (b1 - b0) * T ids. The same global batch comes out whatever
 * the slicing, so rank count cannot change the data. */
void nm_batch_sample(const int32_t *split, size_t len, int T, uint64_t seed, int stream, uint64_t step,
                     int b0, int b1, int32_t *x, int32_t *y);

#endif
