/* The training step allocates nothing: activations are sized once. Linked with
 * --wrap for malloc/calloc/realloc, which counts every allocation made by
 * nanomoe's own code (not by the MPI, HDF5 or BLAS libraries underneath). */
#include <mpi.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "nanomoe/train.h"
#include "testutil.h"

static long allocations = 0;
void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t s);
void *__real_realloc(void *p, size_t n);
void *__wrap_malloc(size_t n) {
    allocations++;
    return __real_malloc(n);
}
void *__wrap_calloc(size_t n, size_t s) {
    allocations++;
    return __real_calloc(n, s);
}
void *__wrap_realloc(void *p, size_t n) {
    allocations++;
    return __real_realloc(p, n);
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    char text[] = "/tmp/nm_noalloc_XXXXXX";
    int fd = mkstemp(text);
    close(fd);
    nm_test_write_text(text, 30000, 3);
    nm_error err;
    nm_dataset data;
    CHECK(nm_dataset_load(&data, text, NULL, &err) == 0, "%s", err.msg);
    nm_config cfg;
    nm_test_small_config(&cfg);
    cfg.grad_clip = 1.0; /* exercise the optional paths too */
    strcpy(cfg.lr_schedule, "cosine");
    cfg.warmup_iters = 2;
    cfg.vocab_size = data.vocab.size;
    nm_trainer t;
    CHECK(nm_trainer_init(&t, &cfg, &data, MPI_COMM_WORLD, &err) == 0, "%s", err.msg);
    nm_train_step(&t); /* the first step may size lazily grown helpers */
    nm_evaluate(&t);
    long before = allocations;
    for (int i = 0; i < 10; i++) nm_train_step(&t);
    nm_losses v = nm_evaluate(&t);
    long during = allocations - before;
    printf("allocations by nanomoe during 10 training steps and an evaluation: %ld (val %.4f)\n", during, v.loss);
    CHECK(during == 0, "%ld allocations inside the step loop", during);
    CHECK(allocations > 0, "the malloc wrapper counted nothing: the test could not fail");
    nm_trainer_free(&t);
    nm_dataset_free(&data);
    unlink(text);
    int rc = nm_test_report("test_noalloc");
    MPI_Finalize();
    return rc;
}
