/* Checkpoint round trip: save, load, identical parameters, moments, config,
 * vocabulary and eval output; atomic replacement; whole-tree reads. */
#include <mpi.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "nanomoe/ckpt.h"
#include "nanomoe/train.h"
#include "testutil.h"

static int blocks_equal(float *const a[2], float *const b[2], const nm_param_layout *l) {
    return memcmp(a[0], b[0], sizeof(float) * l->n_dense) == 0 && memcmp(a[1], b[1], sizeof(float) * l->n_expert) == 0;
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    /* argv[1]: where to leave a checkpoint for the h5py schema check */
    const char *keep = argc > 1 ? argv[1] : NULL;
    char dir[] = "/tmp/nm_ckpt_XXXXXX";
    if (!mkdtemp(dir)) return 1;
    char text[256], path[256], tmp[300];
    snprintf(text, sizeof text, "%s/text.txt", dir);
    snprintf(path, sizeof path, "%s/ckpt.h5", dir);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    nm_test_write_text(text, 40000, 1);

    nm_error err;
    nm_dataset data;
    CHECK(nm_dataset_load(&data, text, NULL, &err) == 0, "%s", err.msg);
    nm_config cfg;
    nm_test_small_config(&cfg);
    cfg.d_ff = 48;
    cfg.block_size = 16;
    cfg.batch_size = 4;
    cfg.learning_rate = 1e-3;
    cfg.seed = 7;
    strcpy(cfg.data, text);
    strcpy(cfg.out_dir, dir);
    cfg.vocab_size = data.vocab.size;

    nm_trainer t;
    CHECK(nm_trainer_init(&t, &cfg, &data, MPI_COMM_WORLD, &err) == 0, "%s", err.msg);
    for (int i = 0; i < 5; i++) nm_train_step(&t);
    CHECK(nm_ckpt_save(path, &t.model, &t.opt, &data.vocab, t.step, t.tokens_seen, "test-run", &err) == 0, "%s", err.msg);
    CHECK(access(path, R_OK) == 0, "checkpoint not written");
    CHECK(access(tmp, F_OK) != 0, "temporary file left behind");

    /* header */
    nm_config c2;
    nm_vocab v2;
    nm_ckpt_meta meta;
    CHECK(nm_ckpt_read_header(path, MPI_COMM_WORLD, &c2, &v2, &meta, &err) == 0, "%s", err.msg);
    for (int i = 0; i < nm_config_nkeys(); i++) {
        const nm_config_key *k = nm_config_key_at(i);
        char a[NM_PATH_MAX], b[NM_PATH_MAX];
        nm_config_format(&cfg, k, a, sizeof a);
        nm_config_format(&c2, k, b, sizeof b);
        CHECK(strcmp(a, b) == 0, "config key %s: saved %s, read %s", k->name, a, b);
    }
    CHECK(v2.size == data.vocab.size && memcmp(v2.bytes, data.vocab.bytes, (size_t)v2.size) == 0, "vocab differs");
    CHECK(meta.step == 5 && meta.tokens_seen == 5L * cfg.batch_size * cfg.block_size, "step %lld tokens %lld",
          (long long)meta.step, (long long)meta.tokens_seen);
    CHECK(meta.has_optimizer && meta.optimizer_step == 5, "optimizer step %lld", (long long)meta.optimizer_step);

    /* parameters and moments */
    nm_model m2;
    nm_adamw o2;
    CHECK(nm_model_create(&m2, &c2, MPI_COMM_WORLD, 8, c2.block_size, &err) == 0, "%s", err.msg);
    nm_adamw_init(&o2, &m2.layout, &c2);
    CHECK(!blocks_equal(t.model.params, m2.params, &m2.layout) || cfg.seed != c2.seed,
          "a fresh model already equals the trained one: the test could not fail");
    CHECK(nm_ckpt_read_params(path, &m2, &o2, &err) == 0, "%s", err.msg);
    CHECK(blocks_equal(t.model.params, m2.params, &m2.layout), "parameters differ after the round trip");
    CHECK(blocks_equal(t.opt.m, o2.m, &m2.layout), "first moments differ");
    CHECK(blocks_equal(t.opt.v, o2.v, &m2.layout), "second moments differ");
    CHECK(o2.step == 5, "optimizer step %lld", (long long)o2.step);

    /* identical eval output from the original and the reloaded model */
    nm_model m1;
    CHECK(nm_model_create(&m1, &cfg, MPI_COMM_WORLD, 8, cfg.block_size, &err) == 0, "%s", err.msg);
    memcpy(m1.params[0], t.model.params[0], sizeof(float) * m1.layout.n_dense);
    memcpy(m1.params[1], t.model.params[1], sizeof(float) * m1.layout.n_expert);
    const int32_t *val = data.tokens + data.n_train;
    size_t nval = data.n_tokens - data.n_train;
    nm_split_eval e1 = nm_evaluate_split(&m1, val, nval, 8), e2 = nm_evaluate_split(&m2, val, nval, 8);
    printf("eval before save: ce %.8f aux %.8f loss %.8f windows %ld\n", e1.ce, e1.aux, e1.loss, e1.windows);
    printf("eval after load:  ce %.8f aux %.8f loss %.8f windows %ld\n", e2.ce, e2.aux, e2.loss, e2.windows);
    CHECK(e1.ce == e2.ce && e1.aux == e2.aux && e1.loss == e2.loss && e1.windows == e2.windows,
          "eval differs after the round trip");
    CHECK(e1.windows == (long)((nval - cfg.block_size - 1) / cfg.block_size) + 1, "windows %ld for %zu tokens",
          e1.windows, nval);
    CHECK(e1.ce > 0.5 && e1.ce < 6.0, "implausible ce %g", e1.ce);

    /* the same tree read as a generic tensor tree */
    float *d = malloc(sizeof(float) * m2.layout.n_dense), *x = malloc(sizeof(float) * m2.layout.n_expert);
    CHECK(nm_ckpt_read_tree(path, MPI_COMM_WORLD, "/optimizer/m", &m2.layout, d, x, &err) == 0, "%s", err.msg);
    float *mb[2] = {d, x};
    CHECK(blocks_equal(mb, t.opt.m, &m2.layout), "tree read of /optimizer/m differs");

    /* saving over an existing checkpoint replaces it whole */
    for (int i = 0; i < 3; i++) nm_train_step(&t);
    CHECK(nm_ckpt_save(path, &t.model, &t.opt, &data.vocab, t.step, t.tokens_seen, "test-run", &err) == 0, "%s", err.msg);
    CHECK(nm_ckpt_read_header(path, MPI_COMM_WORLD, &c2, &v2, &meta, &err) == 0 && meta.step == 8, "step %lld",
          (long long)meta.step);
    CHECK(nm_ckpt_read_params(path, &m2, &o2, &err) == 0, "%s", err.msg);
    CHECK(blocks_equal(t.model.params, m2.params, &m2.layout), "parameters differ after overwrite");

    /* a save that cannot create its file fails cleanly and names the path */
    char bad[300];
    snprintf(bad, sizeof bad, "%s/no/such/dir/ckpt.h5", dir);
    CHECK(nm_ckpt_save(bad, &t.model, &t.opt, &data.vocab, t.step, t.tokens_seen, "test-run", &err) != 0, "save to a missing dir succeeded");
    CHECK(strstr(err.msg, "no/such/dir") != NULL, "message does not name the path: %s", err.msg);

    if (keep) {
        CHECK(nm_ckpt_save(keep, &t.model, &t.opt, &data.vocab, t.step, t.tokens_seen, "test-run", &err) == 0, "%s", err.msg);
    }
    free(d);
    free(x);
    nm_model_free(&m1);
    nm_model_free(&m2);
    nm_adamw_free(&o2);
    nm_trainer_free(&t);
    nm_dataset_free(&data);
    unlink(path);
    unlink(text);
    rmdir(dir);
    int rc = nm_test_report("test_ckpt");
    MPI_Finalize();
    return rc;
}
