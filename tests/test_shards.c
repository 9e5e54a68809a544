/* Token shards: headers of both kinds written here byte for byte as llm.c's
 * write_datafile does (256 int32: magic, version, count; then the tokens),
 * a glob over several shards, windows across shard boundaries, and a clear
 * error naming the file for every bad input. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "nanomoe/shards.h"

static char dir[] = "/tmp/nm_shards_XXXXXX";

/* llm.c's layout, independently of nm_shard_write */
static void write_llmc(const char *name, int32_t magic, int32_t version, int32_t count, const uint32_t *ids, int n,
                       int width) {
    char p[256];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "wb");
    int32_t h[256] = {0};
    h[0] = magic, h[1] = version, h[2] = count;
    fwrite(h, sizeof h, 1, f);
    for (int i = 0; i < n; i++) {
        uint16_t a = (uint16_t)ids[i];
        if (width == 2) fwrite(&a, 2, 1, f);
        else fwrite(&ids[i], 4, 1, f);
    }
    fclose(f);
}

static int fails_open(const char *pattern, const char *want1, const char *want2) {
    nm_shards s;
    nm_error e = {{0}};
    char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, pattern);
    if (nm_shards_open(&s, p, &e) == 0) {
        nm_shards_close(&s);
        return 0;
    }
    if (!strstr(e.msg, want1) || (want2 && !strstr(e.msg, want2))) {
        fprintf(stderr, "message: %s\n", e.msg);
        return 0;
    }
    return 1;
}

int main(void) {
    if (!mkdtemp(dir)) return 1;
    uint32_t a[100], b[37], c[5];
    for (int i = 0; i < 100; i++) a[i] = (uint32_t)(i * 7 % 50257);
    for (int i = 0; i < 37; i++) b[i] = (uint32_t)(50000 + i);
    for (int i = 0; i < 5; i++) c[i] = (uint32_t)(100000 + i); /* beyond uint16: a uint32 shard */
    write_llmc("train_000.bin", 20240520, 1, 100, a, 100, 2);
    write_llmc("train_001.bin", 20240520, 1, 37, b, 37, 2);
    write_llmc("train_002.bin", 20240801, 7, 5, c, 5, 4);

    /* the header of each kind */
    nm_shard_info info;
    nm_error e;
    char p[512];
    snprintf(p, sizeof p, "%s/train_000.bin", dir);
    CHECK(nm_shard_header(p, &info, &e) == 0 && info.width == 2 && info.tokens == 100 && info.file_bytes == 1224,
          "uint16 header: %s", e.msg);
    snprintf(p, sizeof p, "%s/train_002.bin", dir);
    CHECK(nm_shard_header(p, &info, &e) == 0 && info.width == 4 && info.tokens == 5, "uint32 header: %s", e.msg);

    /* nm_shard_write writes the same bytes */
    int32_t ai[100];
    for (int i = 0; i < 100; i++) ai[i] = (int32_t)a[i];
    char q[512];
    snprintf(q, sizeof q, "%s/mine.bin", dir);
    CHECK(nm_shard_write(q, ai, 100, 2, &e) == 0, "%s", e.msg);
    snprintf(p, sizeof p, "%s/train_000.bin", dir);
    FILE *f1 = fopen(p, "rb"), *f2 = fopen(q, "rb");
    unsigned char x1[2048], x2[2048];
    size_t n1 = fread(x1, 1, sizeof x1, f1), n2 = fread(x2, 1, sizeof x2, f2);
    fclose(f1), fclose(f2);
    CHECK(n1 == 1224 && n1 == n2 && memcmp(x1, x2, n1) == 0, "nm_shard_write differs from write_datafile's layout");
    unlink(q);

    /* a glob: three shards in name order, one stream of 142 tokens */
    nm_shards s;
    snprintf(p, sizeof p, "%s/train_*.bin", dir);
    CHECK(nm_shards_open(&s, p, &e) == 0, "%s", e.msg);
    CHECK(s.n == 3 && s.tokens == 142 && s.start[1] == 100 && s.start[2] == 137, "%d shards, %llu tokens", s.n,
          (unsigned long long)s.tokens);
    /* a window crossing both boundaries */
    int32_t w[50];
    CHECK(nm_shards_read(&s, 95, 45, w, 0, &e) == 0, "%s", e.msg);
    int same = 1;
    for (int i = 0; i < 45; i++) {
        uint64_t g = 95 + (uint64_t)i;
        uint32_t want = g < 100 ? a[g] : g < 137 ? b[g - 100] : c[g - 137];
        same &= w[i] == (int32_t)want;
    }
    CHECK(same, "window [95, 140) across two shard boundaries differs from the tokens written");
    CHECK(nm_shards_read(&s, 140, 5, w, 0, &e) != 0 && strstr(e.msg, "past the end"), "read past the end: %s", e.msg);
    /* ids are checked against vocab_size as they are read */
    CHECK(nm_shards_read(&s, 0, 100, w, 50257, &e) == 0, "uint16 ids below 50257: %s", e.msg);
    CHECK(nm_shards_read(&s, 130, 10, w, 50257, &e) != 0 && strstr(e.msg, "train_002.bin") &&
              strstr(e.msg, "token 0 has id 100000") && strstr(e.msg, "vocab_size=50257"),
          "id >= vocab_size: %s", e.msg);
    nm_shards_close(&s);

    /* bad inputs, each naming the file */
    write_llmc("magic.bin", 12345, 1, 3, a, 3, 2);
    CHECK(fails_open("magic.bin", "magic.bin", "magic 12345 version 1 is not a token shard"), "bad magic");
    write_llmc("version.bin", 20240520, 7, 3, a, 3, 2);
    CHECK(fails_open("version.bin", "version.bin", "version 7"), "bad version");
    write_llmc("short.bin", 20240520, 1, 10, a, 9, 2);
    CHECK(fails_open("short.bin", "short.bin", "promises 10 tokens"), "short file");
    snprintf(p, sizeof p, "%s/tiny.bin", dir);
    FILE *t = fopen(p, "wb");
    fwrite("abc", 1, 3, t);
    fclose(t);
    CHECK(fails_open("tiny.bin", "tiny.bin", "fewer than its 1024-byte header"), "file shorter than a header");
    CHECK(fails_open("val_*.bin", "no shard matches", "val_*.bin"), "empty glob");
    CHECK(fails_open("missing.bin", "no shard matches", "missing.bin"), "missing file");

    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
    return nm_test_report("test_shards");
}
