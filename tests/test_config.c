/* Config: defaults, the shipped INI files, overrides, round trips and messages. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "nanomoe/config.h"

static int fails_with(nm_config *c, const char *pair, const char *want1, const char *want2) {
    nm_error e = {{0}};
    int rc = nm_config_set_pair(c, pair, &e);
    if (rc == 0) return 0;
    return strstr(e.msg, want1) != NULL && (!want2 || strstr(e.msg, want2) != NULL);
}

static int validate_fails_with(nm_config c, const char *a, const char *b, const char *want1, const char *want2) {
    nm_error e = {{0}};
    if (nm_config_set_pair(&c, a, &e) != 0 || (b && nm_config_set_pair(&c, b, &e) != 0)) return 0;
    if (nm_config_validate(&c, &e) == 0) return 0;
    return strstr(e.msg, want1) != NULL && strstr(e.msg, want2) != NULL;
}

int main(void) {
    nm_config d, c;
    nm_error e;
    nm_config_defaults(&d);
    /* reference defaults (model-spec.md) */
    CHECK(d.d_model == 128 && d.n_layers == 4 && d.n_heads == 4 && d.d_ff == 512, "model defaults");
    CHECK(d.n_experts == 4 && d.top_k == 2 && d.block_size == 128, "moe defaults");
    CHECK(d.dropout_rate == 0.1 && d.aux_loss_coeff == 0.01 && d.learning_rate == 3e-4 && d.weight_decay == 0.1,
          "training defaults");
    CHECK(d.batch_size == 32 && d.max_iters == 5000 && d.eval_interval == 250 && d.eval_iters == 50 && d.seed == 42,
          "loop defaults");
    CHECK(!strcmp(d.lr_schedule, "constant") && d.grad_clip == 0 && d.decay_norms_biases == 1, "options off");
    CHECK(nm_config_validate(&d, &e) == 0, "defaults invalid: %s", e.msg);

    /* configs/shakespeare.ini is exactly the reference */
    c = d;
    CHECK(nm_config_load_ini(&c, "../configs/shakespeare.ini", &e) == 0, "%s", e.msg);
    for (int i = 0; i < nm_config_nkeys(); i++) {
        const nm_config_key *k = nm_config_key_at(i);
        if (!strcmp(k->name, "ckpt_interval")) continue;
        char a[NM_PATH_MAX], b[NM_PATH_MAX];
        nm_config_format(&d, k, a, sizeof a);
        nm_config_format(&c, k, b, sizeof b);
        CHECK(!strcmp(a, b), "shakespeare.ini %s = %s, reference default %s", k->name, b, a);
    }
    nm_config_defaults(&c);
    CHECK(nm_config_load_ini(&c, "../configs/tiny.ini", &e) == 0 && nm_config_validate(&c, &e) == 0, "tiny.ini: %s",
          e.msg);
    CHECK(c.d_model < d.d_model && c.block_size < d.block_size, "tiny.ini is not small");

    /* every key round-trips through its text form */
    c = d;
    c.dropout_rate = 0.123456789;
    c.learning_rate = 1.0 / 3.0;
    for (int i = 0; i < nm_config_nkeys(); i++) {
        const nm_config_key *k = nm_config_key_at(i);
        if (!k->settable) continue;
        char a[NM_PATH_MAX], b[NM_PATH_MAX];
        nm_config cc = d;
        nm_config_format(&c, k, a, sizeof a);
        if (!a[0]) continue; /* out_dir's default is empty: "runs/<config name>" */
        CHECK(nm_config_set(&cc, k->name, a, &e) == 0, "%s=%s: %s", k->name, a, e.msg);
        nm_config_format(&cc, k, b, sizeof b);
        CHECK(!strcmp(a, b), "%s round trip %s -> %s", k->name, a, b);
    }

    /* sections are for readability: a key means the same anywhere; comments */
    char path[] = "/tmp/nm_cfg_XXXXXX";
    int fd = mkstemp(path);
    FILE *f = fdopen(fd, "w");
    fprintf(f, "; comment\n# another\n[run]\nd_model = 64\n[whatever]\ntop_k=1 ; inline\nlearning_rate = 1e-3\n");
    fclose(f);
    c = d;
    CHECK(nm_config_load_ini(&c, path, &e) == 0, "%s", e.msg);
    CHECK(c.d_model == 64 && c.top_k == 1 && c.learning_rate == 1e-3, "ini values %d %d %g", c.d_model, c.top_k,
          c.learning_rate);
    f = fopen(path, "w");
    fprintf(f, "[model]\nd_model = 64\nthis line is wrong\n");
    fclose(f);
    c = d;
    CHECK(nm_config_load_ini(&c, path, &e) != 0 && strstr(e.msg, ":3:"), "syntax error not located: %s", e.msg);
    f = fopen(path, "w");
    fprintf(f, "[model]\nn_expert = 8\n");
    fclose(f);
    CHECK(nm_config_load_ini(&c, path, &e) != 0 && strstr(e.msg, "n_expert") && strstr(e.msg, "n_experts"),
          "unknown key message: %s", e.msg);
    unlink(path);
    CHECK(nm_config_load_ini(&c, "/nonexistent/x.ini", &e) != 0 && strstr(e.msg, "/nonexistent/x.ini"),
          "missing file message: %s", e.msg);

    /* overrides and their messages */
    c = d;
    CHECK(nm_config_set_pair(&c, "n_layers=2", &e) == 0 && c.n_layers == 2, "override");
    CHECK(fails_with(&c, "d_model=12x", "d_model", "12x"), "non-integer");
    CHECK(fails_with(&c, "dropout_rate=1.5", "dropout_rate", "1.5"), "range");
    CHECK(fails_with(&c, "block_size=1", "block_size", "[2,"), "block_size bound");
    CHECK(fails_with(&c, "batch_size=0", "batch_size", "0"), "batch_size bound");
    CHECK(fails_with(&c, "top_k=", "top_k", "no value"), "missing value");
    CHECK(fails_with(&c, "learning_rate=nan", "learning_rate", "nan"), "nan");
    CHECK(fails_with(&c, "vocab_size=10", "vocab_size", "data"), "vocab_size is derived");
    CHECK(fails_with(&c, "lr_schedule=linear", "lr_schedule", "cosine"), "schedule names");
    CHECK(fails_with(&c, "bogus", "key=value", "bogus"), "not a pair");
    CHECK(validate_fails_with(d, "top_k=5", NULL, "top_k=5", "n_experts=4"), "top_k > n_experts");
    CHECK(validate_fails_with(d, "d_model=30", NULL, "d_model=30", "n_heads=4"), "d_model not divisible by n_heads");
    CHECK(validate_fails_with(d, "dropout_rate=1", NULL, "dropout_rate", "[0, 1)"), "dropout 1");
    CHECK(validate_fails_with(d, "lr_schedule=cosine", "warmup_iters=6000", "warmup_iters=6000", "max_iters=5000"),
          "warmup > max_iters");
    return nm_test_report("test_config");
}
