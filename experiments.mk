# The handout's experiments (CS336 assignment 1, section 7): a learning-rate sweep, a batch-size sweep and
# four architecture ablations. The Makefile includes this file; every run is
#   lmproject fit --config $(EXP_CONFIG) --config <overlay> --trainer.default_root_dir $(RUNS)/<sweep>/<point>
# and each sweep ends with `lmproject plot` of its runs into $(RUNS)/<sweep>/curves.png.
#
#   make lr-sweep                       configs/sweeps/lr/*.yaml (lr_max 1e-4 ... 1e-1; some diverge)
#   make batch-size-sweep               configs/sweeps/batch_size/*.yaml (batch 8 ... 512, same token budget)
#   make ablations                      baseline + configs/ablations/{no_rmsnorm,post_norm,nope,silu}.yaml
#   make lr-sweep LR_POINTS="lr_1e-3 lr_3e-3"     only some points
#   make lr-sweep EXP_CONFIG=configs/demo.yaml    the same sweep on another base config
#   make lr-sweep EXP_ARGS="--train_tokens=40960000"   extra `lmproject fit` arguments for every run
#
# A finished run leaves $(RUNS)/<sweep>/<point>/fit.status (the exit status of fit: 0, or 3 when the loss
# diverged); make skips it next time. `make -k` is not needed: a diverged run is a result, not a failure of
# the sweep. Any other status (Ctrl-C, a missing data file, a typo in an overlay) leaves no fit.status and
# stops make with that status; the next `make` resumes the run from its last checkpoint.

EXP_CONFIG ?= configs/tinystories.yaml
EXP_ARGS ?=
RUNS ?= runs
LM := $(BIN)/lmproject
LR_POINTS ?= lr_1e-4 lr_3e-4 lr_1e-3 lr_3e-3 lr_1e-2 lr_3e-2 lr_1e-1
# bs_1 exists too but is not run by default: at the TinyStories budget it is 1.28M optimizer steps (hours of
# per-step overhead); add it with BATCH_POINTS="bs_1 ..." or give it a smaller EXP_ARGS=--train_tokens=...
BATCH_POINTS ?= bs_8 bs_32 bs_64 bs_128 bs_256 bs_512
ABLATIONS ?= no_rmsnorm post_norm nope silu

.PHONY: experiments lr-sweep batch-size-sweep ablations recipe-compare

experiments: lr-sweep batch-size-sweep ablations

# One training run: $(call fit_run,<overlay or empty>,<run dir>). Only 0 (done) and 3 (diverged) are results.
# An overlay that does not exist (a typo in LR_POINTS) stops make before the run's folder is made.
define fit_run
$(if $(1),test -f $(1) || { echo "experiments.mk: $(1): no such overlay" >&2; exit 2; }; )\
mkdir -p $(2) && $(LM) fit --config $(EXP_CONFIG) $(if $(1),--config $(1)) --trainer.default_root_dir $(2) \
    --ckpt_path last $(EXP_ARGS); status=$$?; \
    if [ $$status -ne 0 ] && [ $$status -ne 3 ]; then exit $$status; fi; echo $$status > $(2)/fit.status
endef

$(RUNS)/lr/%/fit.status: | install
	$(call fit_run,configs/sweeps/lr/$*.yaml,$(RUNS)/lr/$*)

$(RUNS)/batch_size/%/fit.status: | install
	$(call fit_run,configs/sweeps/batch_size/$*.yaml,$(RUNS)/batch_size/$*)

$(RUNS)/ablations/baseline/fit.status: | install
	$(call fit_run,,$(RUNS)/ablations/baseline)

$(RUNS)/ablations/%/fit.status: | install
	$(call fit_run,configs/ablations/$*.yaml,$(RUNS)/ablations/$*)

lr-sweep: $(foreach p,$(LR_POINTS),$(RUNS)/lr/$(p)/fit.status)
	$(LM) plot $(foreach p,$(LR_POINTS),$(RUNS)/lr/$(p)) --out $(RUNS)/lr/curves.png --title "learning-rate sweep"

batch-size-sweep: $(foreach p,$(BATCH_POINTS),$(RUNS)/batch_size/$(p)/fit.status)
	$(LM) plot $(foreach p,$(BATCH_POINTS),$(RUNS)/batch_size/$(p)) --out $(RUNS)/batch_size/curves.png \
	    --title "batch-size sweep"

ablations: $(foreach a,baseline $(ABLATIONS),$(RUNS)/ablations/$(a)/fit.status)
	$(LM) plot $(foreach a,baseline $(ABLATIONS),$(RUNS)/ablations/$(a)) --out $(RUNS)/ablations/curves.png \
	    --title "ablations"

# The modern-recipe switches side by side (bench/recipe_compare.py; figures in bench/RESULTS.md): baseline, each
# switch of configs/recipes/ alone and the combined recipe, on the benchmark corpus (corpus.txt to train,
# heldout.txt to validate) with a 2,048-token BPE, a learning-rate sweep and two seeds each; about 40 minutes
# to an hour on 2 busy CPU cores. Writes $(RUNS)/recipes/{results.md,results.json,curves.png}.
#   make recipe-compare BENCH_CORPUS_DIR=data/bench-corpus   the corpus folder (built there when missing)
SHARED ?= ../shared
BENCH_CORPUS_DIR ?= /tmp/bench-corpus
RECIPE_DATA := data/recipe_compare

$(BENCH_CORPUS_DIR)/corpus.txt $(BENCH_CORPUS_DIR)/heldout.txt:
	OUT=$(abspath $(BENCH_CORPUS_DIR)) bash $(SHARED)/bench/make_corpus.sh

$(RECIPE_DATA)/tokenizer/vocab.json: $(BENCH_CORPUS_DIR)/corpus.txt | install
	$(BIN)/lmproject-bpe train $< --vocab-size 2048 --special-token '<|endoftext|>' --out $(RECIPE_DATA)/tokenizer

$(RECIPE_DATA)/train.npy: $(BENCH_CORPUS_DIR)/corpus.txt $(RECIPE_DATA)/tokenizer/vocab.json
	$(BIN)/lmproject-bpe encode --tokenizer $(RECIPE_DATA)/tokenizer $< $@

$(RECIPE_DATA)/valid.npy: $(BENCH_CORPUS_DIR)/heldout.txt $(RECIPE_DATA)/tokenizer/vocab.json
	$(BIN)/lmproject-bpe encode --tokenizer $(RECIPE_DATA)/tokenizer $< $@

recipe-compare: $(RECIPE_DATA)/train.npy $(RECIPE_DATA)/valid.npy | install
	$(PY) bench/recipe_compare.py --runs $(RUNS)/recipes
