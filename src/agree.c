/* Agreement across ranks and identity checks against rank 0. */
#include "nanomoe/agree.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nanomoe/rng.h"

/* "rank 1 on nodeB: ", "ranks 2, 3 on nodeB: ", "ranks 1 on a, 3 on b: ". */
static void failing_ranks(char *out, size_t cap, const int *flags, const char *hosts, int P) {
    int nfail = 0, same_host = 1, first = -1;
    for (int r = 0; r < P; r++)
        if (!flags[r]) {
            if (first < 0) first = r;
            else if (strcmp(hosts + (size_t)r * MPI_MAX_PROCESSOR_NAME, hosts + (size_t)first * MPI_MAX_PROCESSOR_NAME))
                same_host = 0;
            nfail++;
        }
    size_t o = (size_t)snprintf(out, cap, "%s ", nfail > 1 ? "ranks" : "rank");
    int listed = 0;
    for (int r = 0; r < P && o < cap; r++) {
        if (flags[r]) continue;
        if (listed == 8) {
            o += (size_t)snprintf(out + o, cap - o, " and %d more", nfail - listed);
            break;
        }
        o += (size_t)snprintf(out + o, cap - o, "%s%d", listed ? ", " : "", r);
        if (!same_host) o += (size_t)snprintf(out + o, cap - o, " on %s", hosts + (size_t)r * MPI_MAX_PROCESSOR_NAME);
        listed++;
    }
    if (same_host && o < cap) o += (size_t)snprintf(out + o, cap - o, " on %s", hosts + (size_t)first * MPI_MAX_PROCESSOR_NAME);
    if (o < cap) snprintf(out + o, cap - o, ": ");
}

int nm_agree(MPI_Comm comm, int ok, nm_error *err) { return nm_agree_ex(comm, ok, err, NULL); }

int nm_agree_ex(MPI_Comm comm, int ok, nm_error *err, int *all_failed) {
    int P, rank;
    NM_MPI_CHECK(MPI_Comm_size(comm, &P));
    NM_MPI_CHECK(MPI_Comm_rank(comm, &rank));
    if (all_failed) *all_failed = !ok;
    if (P == 1) return ok;
    ok = ok ? 1 : 0;
    int *flags = nm_malloc(sizeof(int) * (size_t)P), first = -1, nfail = 0;
    NM_MPI_CHECK(MPI_Allgather(&ok, 1, MPI_INT, flags, 1, MPI_INT, comm));
    for (int r = 0; r < P; r++)
        if (!flags[r]) {
            if (first < 0) first = r;
            nfail++;
        }
    if (all_failed) *all_failed = nfail == P;
    if (nfail == 0) {
        free(flags);
        return 1;
    }
    char host[MPI_MAX_PROCESSOR_NAME] = "", *hosts = nm_calloc((size_t)P, MPI_MAX_PROCESSOR_NAME);
    int len;
    NM_MPI_CHECK(MPI_Get_processor_name(host, &len));
    NM_MPI_CHECK(MPI_Allgather(host, MPI_MAX_PROCESSOR_NAME, MPI_CHAR, hosts, MPI_MAX_PROCESSOR_NAME, MPI_CHAR, comm));
    NM_MPI_CHECK(MPI_Bcast(err->msg, sizeof err->msg, MPI_CHAR, first, comm));
    err->msg[sizeof err->msg - 1] = '\0';
    if (nfail < P) { /* a fault only some ranks see: say where */
        char who[512], msg[NM_ERRMSG_MAX];
        failing_ranks(who, sizeof who, flags, hosts, P);
        snprintf(msg, sizeof msg, "%s%.*s", who, (int)(sizeof msg - strlen(who) - 1), err->msg);
        memcpy(err->msg, msg, sizeof msg);
    }
    free(hosts);
    free(flags);
    return 0;
}

void nm_bcast_text(MPI_Comm comm, char *buf, size_t cap) {
    long n = (long)strnlen(buf, cap - 1);
    NM_MPI_CHECK(MPI_Bcast(&n, 1, MPI_LONG, 0, comm));
    NM_MPI_CHECK(MPI_Bcast(buf, (int)n, MPI_CHAR, 0, comm));
    buf[n] = '\0';
}

/* The line of `text` that starts at *p, as a bounded copy; advances *p. */
static void next_line(const char **p, char *out, size_t cap) {
    const char *e = strchr(*p, '\n');
    size_t n = e ? (size_t)(e - *p) : strlen(*p);
    snprintf(out, cap, "%.*s", (int)(n < cap ? n : cap - 1), *p);
    *p += n + (e ? 1 : 0);
}

int nm_agree_same(MPI_Comm comm, int ok, const char *what, const char *text, nm_error *err) {
    return nm_agree_same_ex(comm, ok, what, text, err, NULL);
}

int nm_agree_same_ex(MPI_Comm comm, int ok, const char *what, const char *text, nm_error *err, int *all_failed) {
    int P, rank;
    NM_MPI_CHECK(MPI_Comm_size(comm, &P));
    NM_MPI_CHECK(MPI_Comm_rank(comm, &rank));
    if (all_failed) *all_failed = !ok;
    if (P == 1) return ok;
    long n = rank == 0 ? (long)strlen(text) : 0;
    NM_MPI_CHECK(MPI_Bcast(&n, 1, MPI_LONG, 0, comm));
    char *root = nm_malloc((size_t)n + 1);
    if (rank == 0) memcpy(root, text, (size_t)n);
    NM_MPI_CHECK(MPI_Bcast(root, (int)n, MPI_CHAR, 0, comm));
    root[n] = '\0';
    if (ok && strcmp(root, text) != 0) {
        const char *a = text, *b = root;
        char mine[512], theirs[512];
        do {
            next_line(&a, mine, sizeof mine);
            next_line(&b, theirs, sizeof theirs);
        } while (strcmp(mine, theirs) == 0 && (*a || *b));
        nm_fail(err, "%s differs from rank 0's: %s here, %s on rank 0", what, mine[0] ? mine : "(nothing)",
                theirs[0] ? theirs : "(nothing)");
        ok = 0;
    }
    free(root);
    return nm_agree_ex(comm, ok, err, all_failed);
}

uint64_t nm_hash64(const void *data, size_t n, uint64_t seed) {
    const unsigned char *p = data;
    uint64_t h = nm_mix64(seed ^ (uint64_t)n), w;
    size_t i = 0;
    /* 8 bytes at a time through the SplitMix64 mixer, the tail zero-padded */
    for (; i + 8 <= n; i += 8) {
        memcpy(&w, p + i, 8);
        h = nm_mix64(h ^ w) + NM_RNG_GAMMA;
    }
    if (i < n) {
        w = 0;
        memcpy(&w, p + i, n - i);
        h = nm_mix64(h ^ w) + NM_RNG_GAMMA;
    }
    return nm_mix64(h);
}
