//! Integration tests of fold_testkit (one test binary). Container tests need a Docker engine;
//! without one they print `SKIPPED: no docker engine`, unless `FOLD_REQUIRE_DOCKER=1`.

mod docker_smoke;
