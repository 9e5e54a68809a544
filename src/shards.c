/* Token shards in llm.c's format, memory-mapped. */
#include "nanomoe/shards.h"

#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "nanomoe/agree.h"

#define HEADER_BYTES (NM_SHARD_HEADER_INTS * sizeof(int32_t))

int nm_shard_header(const char *path, nm_shard_info *info, nm_error *err) {
    memset(info, 0, sizeof *info);
    int fd = open(path, O_RDONLY);
    if (fd < 0) return nm_fail(err, "data: cannot read shard '%s': %s", path, strerror(errno));
    struct stat st;
    int32_t h[NM_SHARD_HEADER_INTS];
    ssize_t got = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) ? read(fd, h, HEADER_BYTES) : -1;
    close(fd);
    if (got < 0) return nm_fail(err, "data: shard '%s' is not a regular file", path);
    if ((size_t)got < HEADER_BYTES)
        return nm_fail(err, "data: shard '%s' has %lld bytes, fewer than its 1024-byte header", path, (long long)got);
    info->magic = h[0];
    info->version = h[1];
    info->file_bytes = (uint64_t)st.st_size;
    if (h[0] == NM_SHARD_MAGIC_U16 && h[1] == NM_SHARD_VERSION_U16) info->width = 2;
    else if (h[0] == NM_SHARD_MAGIC_U32 && h[1] == NM_SHARD_VERSION_U32) info->width = 4;
    else
        return nm_fail(err,
                       "data: shard '%s': header magic %d version %d is not a token shard (expected magic %d version "
                       "%d for uint16 tokens, or magic %d version %d for uint32)",
                       path, h[0], h[1], NM_SHARD_MAGIC_U16, NM_SHARD_VERSION_U16, NM_SHARD_MAGIC_U32,
                       NM_SHARD_VERSION_U32);
    if (h[2] < 0) return nm_fail(err, "data: shard '%s': token count %d in its header is negative", path, h[2]);
    info->tokens = (uint64_t)(uint32_t)h[2];
    uint64_t want = HEADER_BYTES + info->tokens * (uint64_t)info->width;
    if (info->file_bytes != want)
        return nm_fail(err,
                       "data: shard '%s' has %llu bytes, but its header promises %llu tokens of %d bytes (%llu bytes "
                       "with the header): truncated or not a shard",
                       path, (unsigned long long)info->file_bytes, (unsigned long long)info->tokens, info->width,
                       (unsigned long long)want);
    info->header_hash = nm_hash64(h, HEADER_BYTES, 0);
    return 0;
}

void nm_shards_close(nm_shards *s) {
    for (int i = 0; i < s->n; i++)
        if (s->shard[i].map) munmap((void *)s->shard[i].map, s->shard[i].map_bytes);
    free(s->shard);
    free(s->start);
    memset(s, 0, sizeof *s);
}

int nm_shards_open(nm_shards *s, const char *pattern, nm_error *err) {
    memset(s, 0, sizeof *s);
    glob_t g;
    int rc = glob(pattern, GLOB_ERR, NULL, &g);
    if (rc == GLOB_NOMATCH) return nm_fail(err, "data: no shard matches '%s'", pattern);
    if (rc != 0) {
        globfree(&g);
        return nm_fail(err, "data: cannot list the shards '%s': %s", pattern, strerror(errno));
    }
    s->n = (int)g.gl_pathc; /* glob sorts the names */
    s->shard = nm_calloc((size_t)s->n, sizeof *s->shard);
    s->start = nm_calloc((size_t)s->n + 1, sizeof *s->start);
    for (int i = 0; i < s->n; i++) {
        nm_shard *sh = &s->shard[i];
        if (snprintf(sh->path, sizeof sh->path, "%s", g.gl_pathv[i]) >= (int)sizeof sh->path) {
            rc = nm_fail(err, "data: shard path '%s' is too long", g.gl_pathv[i]);
            break;
        }
        if ((rc = nm_shard_header(sh->path, &sh->info, err)) != 0) break;
        int fd = open(sh->path, O_RDONLY);
        void *p = fd < 0 ? MAP_FAILED : mmap(NULL, (size_t)sh->info.file_bytes, PROT_READ, MAP_SHARED, fd, 0);
        if (fd >= 0) close(fd);
        if (p == MAP_FAILED) {
            rc = nm_fail(err, "data: cannot map shard '%s': %s", sh->path, strerror(errno));
            break;
        }
        sh->map = p;
        sh->map_bytes = (size_t)sh->info.file_bytes;
        s->start[i + 1] = s->start[i] + sh->info.tokens;
    }
    globfree(&g);
    if (rc != 0) {
        nm_shards_close(s);
        return -1;
    }
    s->tokens = s->start[s->n];
    return 0;
}

int nm_shards_read(const nm_shards *s, uint64_t pos, size_t n, int32_t *out, int64_t vocab_size, nm_error *err) {
    if (pos + n > s->tokens)
        return nm_fail(err, "data: tokens [%llu, %llu) are past the end of the shards (%llu tokens)",
                       (unsigned long long)pos, (unsigned long long)(pos + n), (unsigned long long)s->tokens);
    /* the shard holding pos: binary search over the starts */
    int lo = 0, hi = s->n - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (s->start[mid] <= pos) lo = mid;
        else hi = mid - 1;
    }
    size_t done = 0;
    for (int i = lo; done < n; i++) {
        const nm_shard *sh = &s->shard[i];
        uint64_t first = pos + done - s->start[i], avail = sh->info.tokens - first;
        size_t take = n - done < avail ? n - done : (size_t)avail;
        const unsigned char *p = sh->map + HEADER_BYTES + first * (uint64_t)sh->info.width;
        if (sh->info.width == 2) {
            const uint16_t *t = (const uint16_t *)p;
            for (size_t k = 0; k < take; k++) out[done + k] = t[k];
        } else {
            const uint32_t *t = (const uint32_t *)p;
            for (size_t k = 0; k < take; k++) {
                if (t[k] > INT32_MAX)
                    return nm_fail(err, "data: shard '%s': token %llu has id %u, beyond 2^31 - 1", sh->path,
                                   (unsigned long long)(first + k), t[k]);
                out[done + k] = (int32_t)t[k];
            }
        }
        if (vocab_size > 0)
            for (size_t k = 0; k < take; k++)
                if (out[done + k] >= vocab_size)
                    return nm_fail(err, "data: shard '%s': token %llu has id %d, not below vocab_size=%lld", sh->path,
                                   (unsigned long long)(first + k), out[done + k], (long long)vocab_size);
        done += take;
    }
    return 0;
}

int nm_shard_write(const char *path, const int32_t *ids, size_t n, int width, nm_error *err) {
    if (width != 2 && width != 4) return nm_fail(err, "shard width %d (expected 2 or 4)", width);
    if (n > INT32_MAX) return nm_fail(err, "shard '%s': %zu tokens do not fit the header's int32 count", path, n);
    int32_t h[NM_SHARD_HEADER_INTS] = {0};
    h[0] = width == 2 ? NM_SHARD_MAGIC_U16 : NM_SHARD_MAGIC_U32;
    h[1] = width == 2 ? NM_SHARD_VERSION_U16 : NM_SHARD_VERSION_U32;
    h[2] = (int32_t)n;
    FILE *f = fopen(path, "wb");
    if (!f) return nm_fail(err, "cannot write shard '%s': %s", path, strerror(errno));
    int ok = fwrite(h, sizeof h, 1, f) == 1;
    for (size_t i = 0; ok && i < n; i++) {
        if (ids[i] < 0 || (width == 2 && ids[i] > 65535)) {
            fclose(f);
            unlink(path);
            return nm_fail(err, "shard '%s': id %d at %zu does not fit %d bytes", path, ids[i], i, width);
        }
        uint16_t a = (uint16_t)ids[i];
        uint32_t b = (uint32_t)ids[i];
        ok = width == 2 ? fwrite(&a, 2, 1, f) == 1 : fwrite(&b, 4, 1, f) == 1;
    }
    if (fclose(f) != 0) ok = 0;
    if (!ok) {
        unlink(path);
        return nm_fail(err, "cannot write shard '%s': %s", path, strerror(errno));
    }
    return 0;
}
