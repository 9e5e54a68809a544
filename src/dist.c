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

void nm_dist_sum(float *buf, size_t n, MPI_Comm comm, int tree, float *scratch) {
    int P, r;
    NM_MPI_CHECK(MPI_Comm_size(comm, &P));
    if (P == 1 || n == 0) return;
    NM_MPI_CHECK(MPI_Comm_rank(comm, &r));
    if (!tree || !nm_is_pow2(P)) {
        /* MPI's reduction order is its own: the same on every rank, but not across rank counts */
        for (size_t o = 0; o < n; o += 1u << 30) {
            int cnt = (int)(n - o < (1u << 30) ? n - o : (1u << 30));
            NM_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, buf + o, cnt, MPI_FLOAT, MPI_SUM, comm));
        }
        return;
    }
    for (int dist = 1; dist < P; dist <<= 1) {
        int partner = r ^ dist;
        for (size_t o = 0; o < n; o += 1u << 30) {
            int cnt = (int)(n - o < (1u << 30) ? n - o : (1u << 30));
            NM_MPI_CHECK(MPI_Sendrecv(buf + o, cnt, MPI_FLOAT, partner, 77, scratch + o, cnt, MPI_FLOAT, partner, 77,
                                      comm, MPI_STATUS_IGNORE));
        }
        /* lower half + upper half, on both partners: the same bits */
        if (r < partner) {
            for (size_t i = 0; i < n; i++) buf[i] = buf[i] + scratch[i];
        } else {
            for (size_t i = 0; i < n; i++) buf[i] = scratch[i] + buf[i];
        }
    }
}
