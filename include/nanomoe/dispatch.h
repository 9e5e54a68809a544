/* Token exchange of the MoE layer: token copies grouped by expert leave for the
 * ranks that own their experts (MPI_Alltoallv) and come back after the experts
 * ran. An expert sees its tokens ordered by source rank, then by position on
 * that rank: the global token order, whatever the rank count. */
#ifndef NANOMOE_DISPATCH_H
#define NANOMOE_DISPATCH_H

#include <mpi.h>
#include <stddef.h>
#include <stdint.h>

#include "nanomoe/timers.h"

/* One layer's exchange, kept from forward for backward. */
typedef struct nm_dispatch_plan {
    int rows_out;           /* slot rows this rank sends (its tokens x top_k) */
    int rows_in;            /* rows its local experts receive */
    int32_t *from;          /* [Q, El] rows from source rank s for local expert e */
    int32_t *expert_rows;   /* [El] rows per local expert */
    int32_t *expert_offset; /* [El + 1] first row of each local expert, expert-major */
    int *scount, *sdispl, *rcount, *rdispl; /* [Q] Alltoallv counts in rows */
} nm_dispatch_plan;

typedef struct nm_dispatch {
    MPI_Comm comm;          /* the expert-parallel group */
    MPI_Comm rep;           /* the replicas of the local experts, MPI_COMM_NULL if none */
    int Q, q;               /* group size and my position */
    int E, El, e0, C;       /* experts in all, local experts [e0, e0 + El), row width */
    MPI_Datatype row;       /* C floats */
    float *stage;           /* [max_rows_in, C] source-major staging */
    size_t max_rows_in;
    double bytes_sent;      /* to other ranks, since init */
    nm_timers *timers;      /* all-to-all time goes to NM_T_ALLTOALL (may be NULL) */
} nm_dispatch;

/* max_rows_in: the most rows the local experts can receive in one layer. */
void nm_dispatch_init(nm_dispatch *d, MPI_Comm ep_comm, MPI_Comm rep_comm, int E, int C, size_t max_rows_in);
void nm_dispatch_free(nm_dispatch *d);
void nm_dispatch_plan_alloc(nm_dispatch_plan *p, const nm_dispatch *d);
void nm_dispatch_plan_free(nm_dispatch_plan *p);

/* From this rank's slot counts per (global) expert, count[E], with slots
 * grouped by expert: exchanges the counts (MPI_Alltoall) and fills the plan. */
void nm_dispatch_make_plan(nm_dispatch *d, nm_dispatch_plan *p, const int32_t *count);

/* slots[rows_out, C] -> rows of the local experts, expert-major [rows_in, C],
 * written to out. With one rank the slots already are that layout and are
 * returned as they are. */
const float *nm_dispatch_to_experts(nm_dispatch *d, const nm_dispatch_plan *p, const float *slots, float *out);

/* Expert-major rows[rows_in, C] -> slots[rows_out, C] on the ranks they came
 * from, written to slots (returns rows itself with one rank). */
const float *nm_dispatch_from_experts(nm_dispatch *d, const nm_dispatch_plan *p, const float *rows, float *slots);

#endif
