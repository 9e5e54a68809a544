/* Process layout and rank-count-independent reductions. */
#include "nanomoe/dist.h"

#include <stdio.h>
#include <string.h>

int nm_dist_ep_size(int P, int E, int requested, int *ep, nm_error *err) {
    int want = requested > 0 ? requested : (P < E ? P : E);
    if (requested == 0 && (P % want != 0 || E % want != 0)) {
        /* min(P, E) does not fit: take the largest size that divides both */
        for (want = (P < E ? P : E); want > 1; want--)
            if (P % want == 0 && E % want == 0) break;
    }
    if (want >= 1 && P % want == 0 && E % want == 0) {
        *ep = want;
        return 0;
    }
    char ok[256] = "";
    size_t o = 0;
    for (int s = 1; s <= P && s <= E; s++)
        if (P % s == 0 && E % s == 0 && o < sizeof ok)
            o += (size_t)snprintf(ok + o, sizeof ok - o, o ? ", %d" : "%d", s);
    return nm_fail(err,
                   "config: expert_parallel=%d does not fit %d rank(s) and n_experts=%d: it must divide both "
                   "(sizes that work: %s)",
                   requested, P, E, ok);
}

void nm_dist_experts(int E, int ep, int g, int *begin, int *count) {
    *count = E / ep;
    *begin = g * *count;
}

void nm_dist_batch_slice(int B, int r, int P, int *b0, int *b1) {
    *b0 = (int)((long)B * r / P);
    *b1 = (int)((long)B * (r + 1) / P);
}

int nm_dist_init(nm_dist *d, MPI_Comm comm, int n_experts, int expert_parallel, nm_error *err) {
    memset(d, 0, sizeof *d);
    NM_MPI_CHECK(MPI_Comm_dup(comm, &d->world));
    NM_MPI_CHECK(MPI_Comm_rank(d->world, &d->rank));
    NM_MPI_CHECK(MPI_Comm_size(d->world, &d->size));
    if (nm_dist_ep_size(d->size, n_experts, expert_parallel, &d->ep, err) != 0) {
        NM_MPI_CHECK(MPI_Comm_free(&d->world));
        return -1;
    }
    NM_MPI_CHECK(MPI_Comm_split(d->world, d->rank / d->ep, d->rank, &d->ep_comm));
    NM_MPI_CHECK(MPI_Comm_split(d->world, d->rank % d->ep, d->rank, &d->rep_comm));
    NM_MPI_CHECK(MPI_Comm_rank(d->ep_comm, &d->ep_rank));
    NM_MPI_CHECK(MPI_Comm_rank(d->rep_comm, &d->rep_rank));
    NM_MPI_CHECK(MPI_Comm_size(d->rep_comm, &d->rep_size));
    return 0;
}

void nm_dist_free(nm_dist *d) {
    if (d->world == MPI_COMM_NULL || !d->world) return;
    NM_MPI_CHECK(MPI_Comm_free(&d->ep_comm));
    NM_MPI_CHECK(MPI_Comm_free(&d->rep_comm));
    NM_MPI_CHECK(MPI_Comm_free(&d->world));
    memset(d, 0, sizeof *d);
}

/* buf += scratch, element type float or double. */
static void add_f(void *buf, const void *scratch, size_t n) {
    float *b = buf;
    const float *s = scratch;
    for (size_t i = 0; i < n; i++) b[i] = b[i] + s[i];
}

static void add_d(void *buf, const void *scratch, size_t n) {
    double *b = buf;
    const double *s = scratch;
    for (size_t i = 0; i < n; i++) b[i] = b[i] + s[i];
}

static void dist_sum(void *buf, size_t n, size_t esize, MPI_Datatype type, MPI_Comm comm, int tree, void *scratch,
                     void (*add)(void *, const void *, size_t)) {
    int P, r;
    NM_MPI_CHECK(MPI_Comm_size(comm, &P));
    if (P == 1 || n == 0) return;
    NM_MPI_CHECK(MPI_Comm_rank(comm, &r));
    const size_t max = 1u << 30; /* MPI counts are ints */
    char *b = buf, *sc = scratch;
    if (!tree || !nm_is_pow2(P)) {
        /* MPI's reduction order is its own: the same on every rank, but not across rank counts */
        for (size_t o = 0; o < n; o += max)
            NM_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, b + o * esize, (int)(n - o < max ? n - o : max), type, MPI_SUM, comm));
        return;
    }
    for (int dist = 1; dist < P; dist <<= 1) {
        int partner = r ^ dist;
        for (size_t o = 0; o < n; o += max) {
            int cnt = (int)(n - o < max ? n - o : max);
            NM_MPI_CHECK(MPI_Sendrecv(b + o * esize, cnt, type, partner, 77, sc + o * esize, cnt, type, partner, 77, comm,
                                      MPI_STATUS_IGNORE));
        }
        /* float addition commutes: lower + upper gives the same bits on both partners */
        add(buf, scratch, n);
    }
}

void nm_dist_sum(float *buf, size_t n, MPI_Comm comm, int tree, float *scratch) {
    dist_sum(buf, n, sizeof(float), MPI_FLOAT, comm, tree, scratch, add_f);
}

void nm_dist_sum_d(double *buf, size_t n, MPI_Comm comm, int tree, double *scratch) {
    dist_sum(buf, n, sizeof(double), MPI_DOUBLE, comm, tree, scratch, add_d);
}
