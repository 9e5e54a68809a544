/* Token shards in llm.c's format, memory-mapped: a header of 256 int32
 * (magic, version, token count, ...) and then the tokens, uint16 (magic
 * 20240520, version 1: GPT-2's 50257 ids fit) or uint32 (magic 20240801,
 * version 7). A set of shards (one file or a glob) reads as one concatenated
 * token stream; only the pages of the windows read are touched, and tokens
 * stay at their stored width. */
#ifndef NANOMOE_SHARDS_H
#define NANOMOE_SHARDS_H

#include <stddef.h>
#include <stdint.h>

#include "nanomoe/config.h"
#include "nanomoe/error.h"

#define NM_SHARD_HEADER_INTS 256
#define NM_SHARD_MAGIC_U16 20240520
#define NM_SHARD_VERSION_U16 1
#define NM_SHARD_MAGIC_U32 20240801
#define NM_SHARD_VERSION_U32 7

/* What a shard's header says, checked against the file's size. */
typedef struct nm_shard_info {
    int32_t magic, version;
    int width;            /* bytes per token: 2 or 4 */
    uint64_t tokens;      /* header[2] */
    uint64_t file_bytes;
    uint64_t header_hash; /* nm_hash64 of the 1024 header bytes: the shard's identity */
} nm_shard_info;

/* Reads and checks the header of one shard: the magic and version must be one
 * of the two kinds and the file exactly header + tokens x width bytes long.
 * The message names the file and what is wrong. */
int nm_shard_header(const char *path, nm_shard_info *info, nm_error *err);

typedef struct nm_shard {
    char path[NM_PATH_MAX];
    nm_shard_info info;
    const unsigned char *map; /* the whole file, read-only */
    size_t map_bytes;
} nm_shard;

/* Shards read as one stream: shard i holds tokens [start[i], start[i+1]). */
typedef struct nm_shards {
    int n;
    nm_shard *shard;
    uint64_t *start; /* [n + 1] */
    uint64_t tokens; /* start[n] */
} nm_shards;

/* Opens a file or every file a glob pattern matches (in name order), checking
 * each header, and maps them. An empty match is an error naming the
 * pattern. */
int nm_shards_open(nm_shards *s, const char *pattern, nm_error *err);
void nm_shards_close(nm_shards *s);

/* Copies tokens [pos, pos + n) of the stream into out (a window may cross
 * shard boundaries), checking every id < vocab_size (vocab_size <= 0: no
 * check). A bad id is an error naming the file, the token's position in it
 * and the value. */
int nm_shards_read(const nm_shards *s, uint64_t pos, size_t n, int32_t *out, int64_t vocab_size, nm_error *err);

/* Writes a shard as llm.c's write_datafile does (width 2 or 4); for tests
 * and tools. Ids must fit the width. */
int nm_shard_write(const char *path, const int32_t *ids, size_t n, int width, nm_error *err);

#endif
