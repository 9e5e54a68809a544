/* Process layout: expert-parallel groups, expert replicas, batch slices, and
 * reductions whose result does not depend on the rank count. */
#ifndef NANOMOE_DIST_H
#define NANOMOE_DIST_H

#include <mpi.h>
#include <stddef.h>

#include "nanomoe/error.h"

/* P ranks form P/ep expert-parallel groups of ep consecutive ranks. Inside a
 * group, rank g of the group owns experts [g*E/ep, (g+1)*E/ep) and tokens move
 * between the group's ranks by all-to-all. Ranks with the same position in
 * different groups hold replicas of the same experts ("replica group"). */
typedef struct nm_dist {
    MPI_Comm world;     /* the run's ranks (a duplicate of the caller's communicator) */
    int rank, size;
    int ep;             /* expert-parallel group size */
    MPI_Comm ep_comm;   /* my expert-parallel group */
    int ep_rank;
    MPI_Comm rep_comm;  /* the replicas of my experts, in batch order */
    int rep_rank, rep_size;
} nm_dist;

/* The expert-parallel group size for P ranks and E experts: `requested`, or
 * min(P, E) when requested is 0. It must divide both P and E; the message of
 * a refusal lists the sizes that would work. Pure (no MPI). */
int nm_dist_ep_size(int P, int E, int requested, int *ep, nm_error *err);

/* Experts [*begin, *begin + *count) of expert-parallel rank g in a group of ep. */
void nm_dist_experts(int E, int ep, int g, int *begin, int *count);

/* Sequences [*b0, *b1) of rank r of P in a global batch of B (contiguous slices). */
void nm_dist_batch_slice(int B, int r, int P, int *b0, int *b1);

/* Collective over comm. */
int nm_dist_init(nm_dist *d, MPI_Comm comm, int n_experts, int expert_parallel, nm_error *err);
void nm_dist_free(nm_dist *d);

/* Sums buf[n] over the ranks of comm so that every rank gets the same bits.
 * With `tree` set and a power-of-two rank count, partials are combined as a
 * fixed binary tree over the ranks in order (recursive doubling; both partners
 * add lower + upper), so that a sum split over more ranks as finer subtrees
 * gives the bits of the same tree computed on fewer ranks. Otherwise
 * MPI_Allreduce. scratch holds n floats. */
void nm_dist_sum(float *buf, size_t n, MPI_Comm comm, int tree, float *scratch);
/* The same for doubles. */
void nm_dist_sum_d(double *buf, size_t n, MPI_Comm comm, int tree, double *scratch);

/* Starts a one-process MPI world when MPI is not running yet (for library
 * users who do not use MPI themselves); 0 on success. */
int nm_ensure_mpi(void);

/* Is n a power of two (n >= 1)? */
static inline int nm_is_pow2(long n) { return n > 0 && (n & (n - 1)) == 0; }

#endif
