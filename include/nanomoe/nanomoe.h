/* nanomoe: Mixture-of-Experts character language models in C.
 * The public header of the library: include this one. It needs no MPI,
 * HDF5 or BLAS headers. Link with `pkg-config --libs nanomoe` or the CMake
 * target nanomoe::nanomoe. See README.md, "Use it as a library". */
#ifndef NANOMOE_NANOMOE_H
#define NANOMOE_NANOMOE_H

#include "nanomoe/api.h"       /* models, training, generation, MHA / MoE / block layers */
#include "nanomoe/attention.h" /* causal attention core, forward / backward */
#include "nanomoe/config.h"    /* nm_config: defaults, INI loading, overrides, validation */
#include "nanomoe/data.h"      /* vocabulary, encoding, text data, batch sampling */
#include "nanomoe/error.h"     /* nm_error */
#include "nanomoe/experts.h"   /* ExpertFFN forward / backward */
#include "nanomoe/ops.h"       /* embedding, layernorm, dense, GELU, dropout, cross-entropy */
#include "nanomoe/params.h"    /* parameter layout, views, counts */
#include "nanomoe/router.h"    /* Router: top-k gates and the load-balancing loss */

#endif
